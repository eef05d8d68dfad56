"""`biomedgpt serve`: an OpenAI-compatible HTTP API and a one-page web UI, a thin shell over
`biomedgpt.inference`. Build the app with `biomedgpt.serve.app.create_app(model, ServerConfig(...))`."""
