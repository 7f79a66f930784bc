from genai_service.cli import app

app(prog_name="genai-service")
