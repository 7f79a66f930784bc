#!/usr/bin/env bash
# Install (or upgrade) genai-service on a Debian/Ubuntu VM, idempotently: run it again at any
# time (a new release, a changed unit) and it converges to the same state.
#
#   sudo GENAI_SOURCE='genai-service[embedded]' ./install.sh          # from an index
#   sudo GENAI_SOURCE=/srv/genai-service ./install.sh                  # from a checkout
#   sudo GENAI_SOURCE='git+https://github.com/OWNER/genai-service@v0.1.0' ./install.sh
#
# What it makes:
#   user and group   genai (system, no login, no home)
#   /opt/genai-service/venv       the service and its dependencies (root-owned, read-only to it)
#   /etc/genai-service/genai-service.env   settings (kept if present)
#   /etc/genai-service/credentials/        secrets, one file per setting (root, 0700)
#   /var/lib/genai-service/models          model files (MODEL=/var/lib/genai-service/models/x.gguf)
#   /etc/systemd/system/genai-service.service, enabled and (re)started
#   /etc/nginx/sites-available/genai-service, when nginx is installed (WITH_NGINX=0 skips it)
# NO_SYSTEMD=1 skips the systemctl calls (containers and images without systemd as PID 1).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GENAI_SOURCE="${GENAI_SOURCE:-genai-service[embedded]}"
PREFIX=/opt/genai-service
CONF=/etc/genai-service
STATE=/var/lib/genai-service
PYTHON="${PYTHON:-python3}"

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }

# 0. What the service needs from the OS (Debian/Ubuntu): Python's venv, llama.cpp's OpenMP
# runtime, openssl for the placeholder certificate. Installed only when missing.
missing=""
for pkg in python3-venv libgomp1 ca-certificates openssl; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

# 1. The system user.
getent group genai >/dev/null || groupadd --system genai
getent passwd genai >/dev/null \
    || useradd --system --gid genai --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin genai

# 2. The virtual environment (created once, upgraded in place).
install -d -m 0755 "$PREFIX"
[ -x "$PREFIX/venv/bin/python" ] || "$PYTHON" -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/python" -m pip install --quiet --upgrade "$GENAI_SOURCE"

# 3. Configuration and secrets: written once, never overwritten.
install -d -m 0755 "$CONF"
install -d -m 0700 "$CONF/credentials"
if [ ! -f "$CONF/genai-service.env" ]; then
    install -m 0644 /dev/null "$CONF/genai-service.env"
    cat >"$CONF/genai-service.env" <<'ENV'
# genai-service settings (README: Settings). Secrets go to /etc/genai-service/credentials/.
MODEL=smollm2
N_PARALLEL=4
# Production: a model-provider API through the upstream engine, the key in
# /etc/genai-service/credentials/openai_api_token.
# ENGINE=upstream
# MODEL=gpt-4o-mini
# UPSTREAM_BASE_URL=https://api.openai.com/v1
ENV
fi
for secret in openai_api_token api_keys; do
    # LoadCredential needs the file; an empty one means "not set".
    [ -f "$CONF/credentials/$secret" ] || install -m 0600 /dev/null "$CONF/credentials/$secret"
done

# 4. Data and model directories (systemd's StateDirectory owns the top one as well).
install -d -m 0750 -o genai -g genai "$STATE" "$STATE/models"

# 5. The unit and the nginx site.
install -m 0644 "$HERE/genai-service.service" /etc/systemd/system/genai-service.service
if [ "${WITH_NGINX:-1}" = 1 ] && [ -d /etc/nginx/sites-available ]; then
    install -m 0644 "$HERE/nginx/genai-service.conf" /etc/nginx/sites-available/genai-service
    ln -sf /etc/nginx/sites-available/genai-service /etc/nginx/sites-enabled/genai-service
    # A self-signed certificate until a real one replaces it (certbot --nginx), so nginx starts.
    if [ ! -f /etc/ssl/genai-service/fullchain.pem ]; then
        install -d -m 0755 /etc/ssl/genai-service
        openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=$(hostname -f)" \
            -keyout /etc/ssl/genai-service/privkey.pem -out /etc/ssl/genai-service/fullchain.pem \
            2>/dev/null
        chmod 0600 /etc/ssl/genai-service/privkey.pem
    fi
fi

if [ "${NO_SYSTEMD:-0}" != 1 ]; then
    systemctl daemon-reload
    systemctl enable genai-service.service
    systemctl restart genai-service.service
    if [ -L /etc/nginx/sites-enabled/genai-service ]; then
        nginx -t && systemctl reload-or-restart nginx
    fi
fi
echo "genai-service installed: $("$PREFIX/venv/bin/genai-service" --version 2>/dev/null || echo "$GENAI_SOURCE")"
