#!/bin/sh
# The nginx service of compose.yaml: the shipped server block (deploy/nginx-courier.conf), pointed at the
# `web` service, then nginx in the foreground.
#
# proxy_pass goes through a variable and a resolver (the container network's DNS, read from
# /etc/resolv.conf): nginx then looks `web` up as requests come (cached 5 s) instead of once at start.
# With the address fixed at start, a restarted web container (podman gives it a new address) got 504s
# until nginx itself was restarted (found by the stack test: stop web, start web).
set -eu
resolver=$(awk '/^nameserver/ { print $2; exit }' /etc/resolv.conf)
until getent hosts web >/dev/null 2>&1; do sleep 0.5; done   # nginx refuses to start on a name it cannot resolve
rm -f /etc/nginx/conf.d/default.conf   # the official image's default server would take port 80 first
sed -e "s|^    listen 80;|    listen 80;\n    resolver $resolver valid=5s ipv6=off;|" \
    -e 's|proxy_pass http://courier;|set $courier_web http://web:8000; proxy_pass $courier_web;|' \
    /etc/courier/nginx-courier.conf > /etc/nginx/conf.d/courier.conf
exec nginx -g 'daemon off;'
