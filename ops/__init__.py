"""Operations: health, statistics, Prometheus metrics, operator actions, management commands."""
