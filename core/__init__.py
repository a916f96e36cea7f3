"""The foundation every layer uses: the exception tree, the Ollama client, the blocking pool, the
request-id logging, a pump for async sources and the in-process channel layer. Imports no app."""
