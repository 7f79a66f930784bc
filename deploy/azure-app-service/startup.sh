#!/bin/sh
# Azure App Service (Linux, Python, deployed from code): the startup command.
#   az webapp config set -g genai -n genai-service --startup-file deploy/azure-app-service/startup.sh
# App Service routes to $PORT (WEBSITES_PORT, 8000 by default) and sets it for the app.
exec genai-service serve --host 0.0.0.0 --port "${PORT:-8000}"
