#!/bin/sh
# The consent store's users on the compose Redis (docker-compose.yml), run inside the
# redis image:
#
#   redis-users.sh start [ARG...]   the redis service's command: writes Redis's ACL file
#                                   (the users below, their passwords as SHA-256 only),
#                                   then starts redis-server with it and ARG... through the
#                                   image's entrypoint, which drops to the redis user
#   redis-users.sh healthcheck      PING as reader: "healthy" means the users are in place
#
# Users: "default" off (no anonymous login); "writer" (the workers) and "reader" (whatever
# checks consent), confined to the keys of REDIS_KEY_PREFIX (the workers'
# CONSENT_STREAM_REDIS_PREFIX), with the rules of consumers/store/acl.py
# (tests/unit/test_compose_redis.py compares them); "admin" for the operator (every key and
# command). Passwords come from the environment, REDIS_PASSWORD_ADMIN, _WRITER and _READER,
# which compose fills in from .env (deploy/docker/compose.env.example). They go into the
# workers' Redis URL unquoted, so they must be 16+ characters of A-Z a-z 0-9 _ -.
set -eu

ACL_FILE=${REDIS_ACL_FILE:-/run/consent-stream/redis-users.acl}

fail() {
    echo "redis-users: $*" >&2
    exit 1
}

password() { # ROLE: prints REDIS_PASSWORD_<ROLE>, checked
    var=REDIS_PASSWORD_$1
    eval "value=\${$var-}"
    [ -n "$value" ] || fail "$var is empty: set it in .env (see deploy/docker/compose.env.example)"
    case $value in
    change-me*)
        fail "$var still holds the placeholder of compose.env.example; generate one with" \
            "python3 -c \"import secrets; print(secrets.token_urlsafe(32))\""
        ;;
    *[!A-Za-z0-9_-]*)
        fail "$var must be at least 16 characters of A-Z a-z 0-9 _ - (secrets.token_urlsafe)"
        ;;
    esac
    [ "${#value}" -ge 16 ] ||
        fail "$var must be at least 16 characters of A-Z a-z 0-9 _ - (secrets.token_urlsafe)"
    printf '%s' "$value"
}

digest() { # ROLE: the SHA-256 of its password, as Redis's "#<hex>" rule wants it
    value=$(password "$1") || exit 1
    hex=$(printf '%s' "$value" | sha256sum) || fail "sha256sum failed"
    printf '#%s' "${hex%% *}"
}

acl_file() { # the ACL file's text
    prefix=${REDIS_KEY_PREFIX:-cs}
    case $prefix in
    "" | *[!A-Za-z0-9_.-]*) fail "REDIS_KEY_PREFIX must be letters, digits, _ . or -" ;;
    esac
    admin=$(digest ADMIN) && writer=$(digest WRITER) && reader=$(digest READER) || exit 1
    echo "user default off resetchannels -@all"
    echo "user admin on $admin ~* &* +@all"
    echo "user writer on $writer ~$prefix:* resetchannels" \
        "-@all +@read +@write +@connection +@scripting -@dangerous"
    echo "user reader on $reader ~$prefix:* resetchannels -@all +@read +@connection -@dangerous"
}

start() {
    text=$(acl_file) || exit 1
    umask 077
    mkdir -p "$(dirname "$ACL_FILE")"
    printf '%s\n' "$text" >"$ACL_FILE.new"
    if [ "$(id -u)" = 0 ] && id redis >/dev/null 2>&1; then
        chown redis "$(dirname "$ACL_FILE")" "$ACL_FILE.new" # redis-server runs as redis
    fi
    mv "$ACL_FILE.new" "$ACL_FILE"
    echo "redis-users: $ACL_FILE: default off; admin, writer, reader (prefix ${REDIS_KEY_PREFIX:-cs})"
    exec docker-entrypoint.sh redis-server "$@" --aclfile "$ACL_FILE"
}

healthcheck() {
    REDISCLI_AUTH=$(password READER) || exit 1
    export REDISCLI_AUTH
    answer=$(redis-cli -h "${REDIS_HOST:-127.0.0.1}" -p "${REDIS_PORT:-6379}" --user reader ping)
    [ "$answer" = PONG ] || fail "PING as reader: $answer"
}

case ${1-} in
start)
    shift
    start "$@"
    ;;
healthcheck) healthcheck ;;
*) fail "usage: redis-users.sh start [redis-server argument...] | healthcheck" ;;
esac
