"""Configuration: file + env overrides, and one-line errors that name the key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from chatbot_site.config import ConfigError, env_names, load_config

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return {"CONFIG_PATH": str(path)}


def test_defaults_match_the_shipped_file():
    shipped = load_config({"CONFIG_PATH": str(ROOT / "config.toml")})
    built_in = load_config({"CONFIG_PATH": "/dev/null"})
    assert shipped.server == built_in.server and shipped.queue == built_in.queue
    assert shipped.ollama.api_url == "http://localhost:11434"
    assert (shipped.server.host, shipped.server.port) == ("0.0.0.0", 8080)


def test_file_values_then_env_overrides(tmp_path):
    env = write(tmp_path, "[cache]\nmax_size_mb = 64\n[ollama]\nkeep_alive = 900\n")
    config = load_config(env)
    assert config.cache.max_size_mb == 64.0 and config.ollama.keep_alive == "900"
    config = load_config(
        {**env, "CACHE_MAX_SIZE_MB": "512", "PORT": "9000", "ALLOWED_HOSTS": "a.example,b.example"}
    )
    assert config.cache.max_size_mb == 512.0 and config.server.port == 9000
    assert config.security.allowed_hosts == ["a.example", "b.example"]


@pytest.mark.parametrize(
    ("toml", "env", "expected"),
    [
        ("[queue]\nmax_concurent = 2\n", {}, r"^\[queue\] max_concurent in .*config.toml: unknown key"),
        ("[queues]\n", {}, r"^\[queues\] in .*: unknown section"),
        (
            '[server]\nport = "eighty"\n',
            {},
            r"^\[server\] port = 'eighty' \(from .*config.toml\): must be an integer$",
        ),
        ("[server]\nport = 70000\n", {}, r"^\[server\] port = 70000 .*must be between 1 and 65535$"),
        ("[cache]\nenabled = 1\n", {}, r"^\[cache\] enabled = 1 .*must be a boolean$"),
        (
            "",
            {"QUEUE_MAX_CONCURRENT": "lots"},
            r"^\[queue\] max_concurrent = 'lots' \(from env QUEUE_MAX_CONCURRENT\)",
        ),
        ("", {"OLLAMA_API_URL": "localhost:11434"}, r"^\[ollama\] api_url .*must be an http"),
        ("", {"CACHE_ENABLED": "perhaps"}, r"^\[cache\] enabled = 'perhaps' \(from env CACHE_ENABLED\)"),
        ("[server\n", {}, r"is not valid TOML"),
        (
            '[[ollama.servers]]\nname = "a"\nurl = "http://a:1"\n[[ollama.servers]]\nname = "b"\nurl = "ftp://b"\n',
            {},
            r"^\[\[ollama\.servers\]\] \(from .*config.toml\): entry 2 \(b\): url must be an http",
        ),
        (
            "",
            {"OLLAMA_SERVERS": "a=http://a:1,b=zzz"},
            r"^\[ollama\] servers = 'a=http://a:1,b=zzz' \(from env OLLAMA_SERVERS\): entry 2 \(b\)",
        ),
    ],
)
def test_bad_values_name_key_value_and_source(tmp_path, toml, env, expected):
    with pytest.raises(ConfigError) as exc:
        load_config({**write(tmp_path, toml), **env})
    message = str(exc.value)
    assert "\n" not in message
    assert re.search(expected, message), message


def test_server_list_from_file_or_from_env(tmp_path):
    toml = '[[ollama.servers]]\nname = "a"\nurl = "http://a:1"\nmax_concurrent = 2\n'
    toml += '[[ollama.servers]]\nname = "b"\nurl = "http://b:2"\nmodels = ["qwen3*"]\nweight = 2\n'
    env = write(tmp_path, toml)
    servers = load_config(env).ollama.servers
    assert [(s.name, s.url, s.max_concurrent, s.models, s.weight) for s in servers] == [
        ("a", "http://a:1", 2, None, 1.0),
        ("b", "http://b:2", None, ["qwen3*"], 2.0),
    ]
    from_env = load_config({**env, "OLLAMA_SERVERS": "x=http://x:3, http://gpu-y:11434"}).ollama.servers
    assert [(s.name, s.url) for s in from_env] == [("x", "http://x:3"), ("gpu-y:11434", "http://gpu-y:11434")]
    assert load_config({"CONFIG_PATH": "/dev/null"}).ollama.servers == []


def test_missing_file():
    with pytest.raises(ConfigError, match=re.escape("config file /nonexistent/x.toml not found")):
        load_config({"CONFIG_PATH": "/nonexistent/x.toml"})


def test_every_env_name_is_documented_in_readme_and_config():
    readme = (ROOT / "README.md").read_text()
    shipped = (ROOT / "config.toml").read_text()
    missing = [name for name in env_names() if name not in readme or name not in shipped]
    assert missing == []


def test_bad_config_stops_manage_py_with_one_line_and_no_traceback():
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "QUEUE_MAX_CONCURRENT": "0", "HOME": "/tmp"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "chatbot-backend: config error: [queue] max_concurrent = '0' (from env QUEUE_MAX_CONCURRENT): "
        "must be between 1 and 256\n"
    )


def test_check_deploy_with_production_settings_has_no_errors(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "ERROR"],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": "/tmp",
            "DEBUG": "false",
            "HTTPS": "true",
            "SECRET_KEY": "x7Rk2pQ9vL4mN8sT1wY6zB3cF5hJ0dG-aE_uI2oP4qR6sT8vW0xY2zA4bC6dE8fG",
            "ALLOWED_HOSTS": "chat.example.org",
            "SQLITE_PATH": str(tmp_path / "db.sqlite3"),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("env", "warnings"),
    [
        ({"HOST": "127.0.0.1", "QUEUE_EMBEDDED_WORKER": "false"}, {"chatbot.W001"}),
        ({"HOST": "127.0.0.1", "REDIS_URL": "redis://127.0.0.1:1/0"}, {"chatbot.W002"}),
        ({"HOST": "0.0.0.0", "DEBUG": "false", "SECRET_KEY": "k" * 50}, {"chatbot.W003"}),
        ({"HOST": "127.0.0.1"}, set()),
    ],
)
def test_system_checks_warn_about_unsafe_combinations(tmp_path, env, warnings):
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "SQLITE_PATH": str(tmp_path / "db.sqlite3"), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = set(re.findall(r"chatbot\.W\d{3}", result.stdout + result.stderr))
    assert found == warnings, result.stdout + result.stderr
