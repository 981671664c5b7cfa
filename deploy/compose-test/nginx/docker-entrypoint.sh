#!/bin/sh
# As the official nginx image's entrypoint: when the command is nginx, each executable file of
# /docker-entrypoint.d is sourced (*.envsh) or run (*.sh), in name order.
set -e
if [ "$1" = "nginx" ]; then
  for f in $(find /docker-entrypoint.d/ -follow -type f -print | sort -V); do
    [ -x "$f" ] || continue
    case "$f" in
      *.envsh) . "$f" ;;
      *.sh) "$f" ;;
    esac
  done
fi
exec "$@"
