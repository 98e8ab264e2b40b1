#!/usr/bin/env bash
# Admin tasks of the compose Kafka (docker-compose.yml), run inside the apache/kafka image:
#
#   kafka-admin.sh healthcheck   the kafka service's healthcheck: an authenticated request
#                                as admin, so "healthy" means the SASL set-up works
#   kafka-admin.sh init          the one-shot kafka-init service: a SCRAM-SHA-512 credential
#                                for every principal, then the ACLs of the third-party
#                                clients (Schema Registry, kafka-exporter)
#
# Principals and passwords come from the environment: SASL_PASSWORD_<NAME> is the password
# of the principal <name> in lower case with "_" as "-" (SASL_PASSWORD_PARTNER_ADS is
# partner-ads). Compose fills them in from the env file (.env, a copy of
# deploy/docker/compose.env.example). No variable here starts with KAFKA_: the image turns
# every KAFKA_* variable of the broker container into a server.properties line.
#
# admin logs in with SASL/PLAIN on the internal listener: the broker's static JAAS knows
# admin and nobody else, so this works before any SCRAM credential exists (they live in
# the KRaft metadata, and the image's launch script formats the storage without
# --add-scram). Every other principal authenticates with SCRAM-SHA-512 only. The ACLs of
# the service's own principals are not made here: `consent-stream acl sync` (the acl-sync
# service) derives them from the policy.
set -euo pipefail

BOOTSTRAP=${ADMIN_BOOTSTRAP_SERVER:-kafka:9092}
BIN=${ADMIN_KAFKA_BIN:-/opt/kafka/bin} # the image's tools (a stub directory in tests)
ITERATIONS=8192 # as the local stack's credentials (deploy/local/stack_auth.py)

fail() {
    echo "kafka-admin: $*" >&2
    exit 1
}

check_password() { # NAME VALUE
    local name=$1 value=$2
    [[ -n $value ]] || fail "$name is empty: set it in .env (see deploy/docker/compose.env.example)"
    if [[ $value == change-me* ]]; then
        fail "$name still holds the placeholder of compose.env.example; generate one with" \
            "python3 -c \"import secrets; print(secrets.token_urlsafe(32))\""
    fi
    # it goes unquoted into JAAS strings and kafka-configs' [password=...] syntax
    [[ $value =~ ^[A-Za-z0-9_-]{16,}$ ]] ||
        fail "$name must be at least 16 characters of A-Z a-z 0-9 _ - (secrets.token_urlsafe)"
}

admin_config() { # the admin's client properties, owner-only: prints the file's path
    [[ -n ${SASL_PASSWORD_ADMIN-} ]] || fail "SASL_PASSWORD_ADMIN is not set"
    local path
    path=$(umask 077 && mktemp)
    printf '%s\n' \
        'security.protocol=SASL_PLAINTEXT' \
        'sasl.mechanism=PLAIN' \
        "sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username=\"admin\" password=\"${SASL_PASSWORD_ADMIN}\";" \
        >"$path"
    echo "$path"
}

principal_of() { # SASL_PASSWORD_PARTNER_ADS -> partner-ads
    local name=${1#SASL_PASSWORD_}
    name=${name,,}
    echo "${name//_/-}"
}

healthcheck() {
    local config
    config=$(admin_config)
    trap "rm -f '$config'" EXIT # expanded now: config is local
    "$BIN/kafka-broker-api-versions.sh" --bootstrap-server "$BOOTSTRAP" \
        --command-config "$config" >/dev/null
}

init() {
    local vars var name config described attempt
    mapfile -t vars < <(compgen -e | grep '^SASL_PASSWORD_' | sort)
    [[ " ${vars[*]} " == *" SASL_PASSWORD_ADMIN "* ]] || fail "SASL_PASSWORD_ADMIN is not set"
    for var in "${vars[@]}"; do
        check_password "$var" "${!var}"
    done
    config=$(admin_config)
    trap "rm -f '$config'" EXIT # expanded now: config is local
    configs() { "$BIN/kafka-configs.sh" --bootstrap-server "$BOOTSTRAP" --command-config "$config" "$@"; }
    acls() { "$BIN/kafka-acls.sh" --bootstrap-server "$BOOTSTRAP" --command-config "$config" "$@"; }

    # KIP-554: the credentials through the broker. Idempotent: the same password again is
    # a new salt, the same secret; a changed password in .env takes effect here.
    for var in "${vars[@]}"; do
        name=$(principal_of "$var")
        echo "kafka-admin: SCRAM-SHA-512 credential of $name"
        configs --alter --entity-type users --entity-name "$name" \
            --add-config "SCRAM-SHA-512=[iterations=$ITERATIONS,password=${!var}]" >/dev/null
    done

    # The broker answers DescribeUserScramCredentials from its metadata, the same metadata
    # its SCRAM authenticator reads: once every principal is listed, logins work.
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        described=$(configs --describe --entity-type users)
        local missing=()
        for var in "${vars[@]}"; do
            name=$(principal_of "$var")
            grep -q "user-principal '$name' are .*SCRAM-SHA-512=iterations=$ITERATIONS" \
                <<<"$described" || missing+=("$name")
        done
        ((${#missing[@]} == 0)) && break
        ((attempt < 10)) || fail "the broker does not list the credentials of: ${missing[*]}"
        sleep 1
    done

    # Schema Registry (principal schema-registry): its store topic, which it creates and
    # checks (cleanup.policy), its reader group (schema-registry-<host>-<port>) and its
    # leader election group (schema-registry). kafka-configs/acls --add are idempotent.
    acls --add --allow-principal User:schema-registry --topic _schemas \
        --operation Read --operation Write --operation Describe \
        --operation DescribeConfigs --operation Create >/dev/null
    acls --add --allow-principal User:schema-registry \
        --resource-pattern-type prefixed --group schema-registry \
        --operation Read --operation Describe >/dev/null
    # kafka-exporter (principal kafka-exporter): metadata, offsets and the lag of every
    # group; Describe reads no record.
    acls --add --allow-principal User:kafka-exporter --topic '*' --group '*' \
        --operation Describe >/dev/null
    echo "kafka-admin: ${#vars[@]} principals, ACLs of schema-registry and kafka-exporter in place"
}

case ${1-} in
healthcheck) healthcheck ;;
init) init ;;
*) fail "usage: kafka-admin.sh healthcheck|init" ;;
esac
