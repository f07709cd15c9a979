
# ---------------------------------------------------------------------------- web tier
# nginx on port 80 in front of the API on 127.0.0.1:8000 (the port in proxy_pass below).

install_tier() {
    install_packages nginx
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
# its limit) gets the contract's answer too, not nginx's HTML 413.
configure_nginx() {
    cat >/etc/nginx/sites-available/anb <<'NGINX'
server {
    # IPv4 only: the load balancer reaches its targets over IPv4, and an IPv6 listen
    # would fail on an image with IPv6 disabled.
    listen 80 default_server;

    client_max_body_size 101m;
    proxy_request_buffering off;
    proxy_http_version 1.1;
    proxy_read_timeout 300s;
    proxy_send_timeout 300s;

    location / {
        proxy_pass http://127.0.0.1:8000;
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $http_x_forwarded_proto;
    }

    error_page 413 = @too_large;
    location @too_large {
        default_type "application/json; charset=utf-8";
        return 400 '{"detail":"El archivo supera el tamaño máximo permitido de 100 MB."}';
    }
}
NGINX
    rm -f /etc/nginx/sites-enabled/default
    ln -sf /etc/nginx/sites-available/anb /etc/nginx/sites-enabled/anb
    nginx -t
    systemctl reload-or-restart nginx
}

main "$@"
