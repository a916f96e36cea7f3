"""The HTTP surfaces (chat-optimized, Ollama, OpenAI, queue), the generation session they share,
the request schemas, SSE framing, authentication and the OpenAPI document."""
