
# ---------------------------------------------------------------------------- web tier
# nginx on port 80 in front of the API on 127.0.0.1:8000 (the port in proxy_pass below).

install_tier() {
    # ffmpeg for ffprobe: the API checks every upload with it.
    install_packages nginx ffmpeg
    install_release api
    write_settings api <<SETTINGS
APP__SERVER__HOST=127.0.0.1
APP__SERVER__PORT=8000
SETTINGS
    install_unit api "KillSignal=SIGTERM
TimeoutStopSec=45"
    configure_nginx
    install_log_agent "-u anb-api -u nginx"
}

# The body limit is just above the API's 100 MB so the API, reading as it streams, is the
# one that refuses an oversize upload; a body nginx refuses anyway (a declared length over
# its limit) gets the contract's answer too, not nginx's HTML 413. Every connection comes
# from the load balancer (the web security group admits nothing else), which puts the
# client's address last in X-Forwarded-For: nginx takes it from there, limits by it, and
# hands the API that one address. Signups and logins are rate limited per address (as the
# API also does), connections per address capped, and slow clients timed out; a body that
# trickles in still ends within the API's upload.receive_timeout.
configure_nginx() {
    cat >/etc/nginx/sites-available/anb <<'NGINX'
real_ip_header X-Forwarded-For;
set_real_ip_from 0.0.0.0/0;
limit_req_zone $binary_remote_addr zone=anb_auth:10m rate=30r/m;
limit_conn_zone $binary_remote_addr zone=anb_conn:10m;
limit_req_status 429;
limit_conn_status 429;

server {
    # IPv4 only: the load balancer reaches its targets over IPv4, and an IPv6 listen
    # would fail on an image with IPv6 disabled.
    listen 80 default_server;

    client_max_body_size 101m;
    client_header_timeout 15s;
    client_body_timeout 15s;
    send_timeout 15s;
    limit_conn anb_conn 20;
    proxy_request_buffering off;
    proxy_http_version 1.1;
    proxy_read_timeout 300s;
    proxy_send_timeout 300s;
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $remote_addr;
    proxy_set_header X-Forwarded-Proto $http_x_forwarded_proto;

    location / {
        proxy_pass http://127.0.0.1:8000;
    }

    location /api/auth/ {
        limit_req zone=anb_auth burst=10 nodelay;
        proxy_pass http://127.0.0.1:8000;
    }

    error_page 413 = @too_large;
    location @too_large {
        default_type "application/json; charset=utf-8";
        return 400 '{"detail":"El archivo supera el tamaño máximo permitido de 100 MB."}';
    }

    error_page 429 = @too_many;
    location @too_many {
        default_type "application/json; charset=utf-8";
        add_header Retry-After 60 always;
        return 429 '{"detail":"Demasiadas solicitudes desde esta dirección; espere un momento."}';
    }
}
NGINX
    rm -f /etc/nginx/sites-enabled/default
    ln -sf /etc/nginx/sites-available/anb /etc/nginx/sites-enabled/anb
    nginx -t
    systemctl reload-or-restart nginx
}

main "$@"
