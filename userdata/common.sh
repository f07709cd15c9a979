#!/bin/bash
# ANB Rising Stars {{tier}} instance: rendered by `provision` from config/aws.toml into the
# tier's launch template. Every value below is a name, never a secret: the database
# password and the token signing key are read from Secrets Manager each time a service
# starts (`write-env`), so they are never in user data and a rotated password is picked up
# on the next restart.
set -euo pipefail

STACK='{{stack}}'
REGION='{{region}}'
ACCOUNT_ID='{{account_id}}'
RELEASE='{{release}}'
BINARY_SHA256='{{binary_sha256}}'
BUCKET='{{bucket}}'
QUEUE='{{queue}}'
DATABASE='{{database}}'
DATABASE_NAME='{{database_name}}'
TOKEN_SECRET='{{token_secret}}'
CLOUDWATCH_AGENT='{{cloudwatch_agent}}'
CLOUDWATCH_AGENT_VERSION='{{cloudwatch_agent_version}}'
LOG_RETENTION_DAYS='{{log_retention_days}}'
TIER='{{tier}}'

export AWS_DEFAULT_REGION="$REGION" DEBIAN_FRONTEND=noninteractive

# Rehearsal seam, unused on AWS (`cargo xtask rehearse` boots this script in containers
# against an emulator): when /etc/default/anb sets AWS_ENDPOINT_URL, every AWS call of
# this script and of the services goes there. The AWS CLI Debian 12 packages (2.9) does
# not read that variable itself.
AWS_ENDPOINT_URL=
if [ -r /etc/default/anb ]; then
    # shellcheck source=/dev/null
    . /etc/default/anb
fi
aws() { command aws ${AWS_ENDPOINT_URL:+--endpoint-url "$AWS_ENDPOINT_URL"} "$@"; }
SELF=/usr/local/lib/anb/instance

say() { echo "anb-$TIER: $*" >&2; }

# Retries a command that needs the network (apt mirrors, S3, the AWS APIs) for ~4 minutes.
retry() {
    local attempt=1
    until "$@"; do
        if [ "$attempt" -ge 8 ]; then
            say "giving up after $attempt attempts: $*"
            return 1
        fi
        say "attempt $attempt failed, retrying in $((attempt * 5)) s: $*"
        sleep $((attempt * 5))
        attempt=$((attempt + 1))
    done
}

install_packages() {
    retry apt-get update -q
    retry apt-get install -y -q --no-install-recommends awscli python3 ca-certificates curl "$@"
}

# Downloads artifacts/<release>/<name> from the stack's bucket (only if this account owns
# it), checks it against the SHA-256 that `provision up` pinned in this script (not a
# checksum from the same bucket, which whoever could swap the binary could swap too), and
# installs it as /usr/local/bin/anb-<name>.
install_release() {
    local name=$1 dir
    if [ -z "$BINARY_SHA256" ]; then
        say "no SHA-256 pinned for release $RELEASE: refusing to install it"
        return 1
    fi
    dir=$(mktemp -d)
    retry aws s3api get-object --bucket "$BUCKET" --key "artifacts/$RELEASE/$name" \
        --expected-bucket-owner "$ACCOUNT_ID" "$dir/$name" >/dev/null
    echo "$BINARY_SHA256  $dir/$name" | sha256sum --check --strict
    install -m 0755 "$dir/$name" "/usr/local/bin/anb-$name"
    rm -rf "$dir"
    say "installed $name of release $RELEASE"
}

# The certificate authorities of RDS in this region: connections to the database verify
# its certificate and host name against them (sslmode=verify-full), so a machine in the
# VPC answering for the database is refused.
RDS_CA_BUNDLE=/usr/local/share/anb/rds-ca.pem
install_rds_ca_bundle() {
    install -d -m 0755 /usr/local/share/anb
    retry curl -fsSL -o "$RDS_CA_BUNDLE.new" \
        "https://truststore.pki.rds.amazonaws.com/$REGION/$REGION-bundle.pem"
    grep -q 'BEGIN CERTIFICATE' "$RDS_CA_BUNDLE.new"
    chmod 0644 "$RDS_CA_BUNDLE.new"
    mv "$RDS_CA_BUNDLE.new" "$RDS_CA_BUNDLE"
}

# The settings a service starts with that are not secret, root-only all the same:
# /etc/anb/<service>.env. $1 is the service; stdin adds tier-specific lines.
write_settings() {
    local service=$1 queue_url
    install_rds_ca_bundle
    # </dev/null: stdin holds the caller's settings, for `cat` below.
    queue_url=$(retry aws sqs get-queue-url --queue-name "$QUEUE" --query QueueUrl \
        --output text </dev/null)
    install -d -m 0700 /etc/anb
    {
        echo "APP__AWS__REGION=$REGION"
        echo "APP__STORAGE__BACKEND=s3"
        echo "APP__STORAGE__BUCKET=$BUCKET"
        echo "APP__STORAGE__EXPECTED_BUCKET_OWNER=$ACCOUNT_ID"
        if [ -n "$AWS_ENDPOINT_URL" ]; then
            echo "APP__AWS__ENDPOINT_URL=$AWS_ENDPOINT_URL"
        fi
        echo "APP__QUEUE__BACKEND=sqs"
        echo "APP__QUEUE__SQS_QUEUE_URL=$queue_url"
        echo "APP__LOG__FORMAT=json"
        cat
    } >"/etc/anb/$service.env"
    chmod 0600 "/etc/anb/$service.env"
}

# Run by systemd as root before each start of a service (ExecStartPre=+): reads the
# database endpoint and its AWS-managed password (and, for the API, the token signing key)
# and writes them to /run/anb/<service>.env, readable by root only. Fails, and systemd
# retries, while the database is still being created.
write_env() {
    local service=$1 address port secret status url
    read -r address port secret status < <(aws rds describe-db-instances \
        --db-instance-identifier "$DATABASE" --output text \
        --query 'DBInstances[0].[Endpoint.Address,Endpoint.Port,MasterUserSecret.SecretArn,DBInstanceStatus]')
    if [ "$address" = None ] || [ "$secret" = None ]; then
        say "database $DATABASE is not reachable yet (status $status); systemd retries"
        return 1
    fi
    url=$(aws secretsmanager get-secret-value --secret-id "$secret" --query SecretString \
        --output text | python3 -c '
import json, sys, urllib.parse
login = json.load(sys.stdin)
user, password = (urllib.parse.quote(login[k], safe="") for k in ("username", "password"))
host, port, name, ca = sys.argv[1:5]
print("postgres://%s:%s@%s:%s/%s?sslmode=verify-full&sslrootcert=%s"
      % (user, password, host, port, name, ca))
' "$address" "$port" "$DATABASE_NAME" "$RDS_CA_BUNDLE")
    umask 077
    install -d -m 0700 /run/anb
    {
        echo "APP__DATABASE__URL=$url"
        # A rotated password is read again from here without a restart.
        echo "APP__DATABASE__PASSWORD_SECRET=$secret"
        if [ "$service" = api ]; then
            echo "APP__AUTH__JWT_SECRET=$(aws secretsmanager get-secret-value \
                --secret-id "$TOKEN_SECRET" --query SecretString --output text)"
        fi
    } >"/run/anb/$service.env.new"
    mv "/run/anb/$service.env.new" "/run/anb/$service.env"
}

# A systemd unit running /usr/local/bin/anb-<service> as the unprivileged user anb.
# $2 is extra [Service] lines.
install_unit() {
    local service=$1 extra=$2
    id anb >/dev/null 2>&1 || useradd --system --home-dir /var/lib/anb --create-home \
        --shell /usr/sbin/nologin anb
    cat >"/etc/systemd/system/anb-$service.service" <<UNIT
[Unit]
Description=ANB Rising Stars $service (release $RELEASE)
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=0

[Service]
User=anb
Group=anb
ExecStartPre=+$SELF write-env $service
EnvironmentFile=/etc/anb/$service.env
EnvironmentFile=-/run/anb/$service.env
ExecStart=/usr/local/bin/anb-$service
Restart=always
RestartSec=10
PrivateTmp=true
NoNewPrivileges=true
ProtectSystem=strict
ProtectHome=true
PrivateDevices=true
ProtectKernelTunables=true
ProtectKernelModules=true
ProtectControlGroups=true
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=true
LockPersonality=true
SystemCallArchitectures=native
SystemCallFilter=@system-service
# A t3.small has 2 GiB: what the service and its ffmpeg/ffprobe children may use, so a
# runaway never takes the instance (and its agent and sshd) with it.
MemoryMax=1536M
TasksMax=512
$extra

[Install]
WantedBy=multi-user.target
UNIT
    systemctl daemon-reload
    systemctl enable "anb-$service.service"
    # A first start that fails (the database in a failover, say) is not the boot's end:
    # systemd starts it again every 10 s (Restart=always), and the rest of the boot (the
    # log agent) must still happen.
    systemctl start "anb-$service.service" ||
        say "anb-$service did not start yet; systemd tries again every 10 s (journalctl -u anb-$service)"
}

# The key Amazon signs the CloudWatch agent with, as its documentation publishes it
# ("Verifying the signature of the CloudWatch agent package").
CLOUDWATCH_AGENT_KEY=937616F3450B7D806CBD9725D58167303B789C72

# Ships the boot log and the services' journal to CloudWatch Logs, group /anb/<stack>,
# one stream per instance and tier. The package (the version `logs.cloudwatch_agent_version`
# names) is installed only if its signature verifies with Amazon's key, itself checked
# against the fingerprint above.
# verify_signed DIR FILE SIGNATURE KEY_FILE FINGERPRINT: whether the key of FINGERPRINT
# signed FILE. Only that key may vouch (N10): it alone is exported into the keyring gpgv
# checks against, whatever else KEY_FILE holds. DIR is scratch space.
verify_signed() {
    local dir=$1 file=$2 signature=$3 key_file=$4 fingerprint=$5
    install -d -m 0700 "$dir/gnupg"
    gpg --homedir "$dir/gnupg" --batch --quiet --import "$key_file"
    gpg --homedir "$dir/gnupg" --batch --export "$fingerprint" >"$dir/pinned.gpg"
    if [ ! -s "$dir/pinned.gpg" ]; then
        say "$key_file lacks the pinned key $fingerprint"
        return 1
    fi
    gpgv --homedir "$dir/gnupg" --keyring "$dir/pinned.gpg" "$signature" "$file"
}

install_log_agent() {
    local units=$1 dir base fingerprint
    [ "$CLOUDWATCH_AGENT" = true ] || return 0
    retry apt-get install -y -q --no-install-recommends gnupg
    dir=$(mktemp -d)
    base="https://amazoncloudwatch-agent-$REGION.s3.$REGION.amazonaws.com"
    retry curl -fsSL -o "$dir/agent.gpg" "$base/assets/amazon-cloudwatch-agent.gpg"
    retry curl -fsSL -o "$dir/agent.deb" \
        "$base/debian/amd64/$CLOUDWATCH_AGENT_VERSION/amazon-cloudwatch-agent.deb"
    retry curl -fsSL -o "$dir/agent.deb.sig" \
        "$base/debian/amd64/$CLOUDWATCH_AGENT_VERSION/amazon-cloudwatch-agent.deb.sig"
    verify_signed "$dir" "$dir/agent.deb" "$dir/agent.deb.sig" "$dir/agent.gpg" \
        "$CLOUDWATCH_AGENT_KEY"
    dpkg -i "$dir/agent.deb"
    rm -rf "$dir"
    install -d -m 0755 /var/log/anb /var/lib/anb-journal
    # Resumes at its cursor after a restart; logrotate (copytruncate) bounds it (N5).
    cat >/etc/systemd/system/anb-journal.service <<UNIT
[Unit]
Description=Copy the journal of $units to /var/log/anb for the CloudWatch agent

[Service]
ExecStart=/bin/sh -c 'exec journalctl --follow --lines=all --cursor-file=/var/lib/anb-journal/cursor --output=short-iso $units >>/var/log/anb/$TIER.log'
Restart=always

[Install]
WantedBy=multi-user.target
UNIT
    cat >/opt/aws/amazon-cloudwatch-agent/etc/anb.json <<JSON
{"logs": {"logs_collected": {"files": {"collect_list": [
  {"file_path": "/var/log/anb/$TIER.log", "log_group_name": "/anb/$STACK",
   "log_stream_name": "{instance_id}/$TIER", "retention_in_days": $LOG_RETENTION_DAYS},
  {"file_path": "/var/log/cloud-init-output.log", "log_group_name": "/anb/$STACK",
   "log_stream_name": "{instance_id}/$TIER-boot", "retention_in_days": $LOG_RETENTION_DAYS}
]}}}}
JSON
    cat >/etc/logrotate.d/anb <<'ROTATE'
/var/log/anb/*.log {
    maxsize 100M
    rotate 1
    copytruncate
    missingok
    notifempty
}
ROTATE
    install -d /etc/systemd/system/logrotate.timer.d
    printf '[Timer]\nOnCalendar=\nOnCalendar=hourly\n' >/etc/systemd/system/logrotate.timer.d/anb.conf
    systemctl daemon-reload
    systemctl enable --now anb-journal.service
    /opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 \
        -s -c file:/opt/aws/amazon-cloudwatch-agent/etc/anb.json
}

boot() {
    # Fail loudly: cloud-init copies this output to the console (aws ec2
    # get-console-output) and the tee copies it to the journal (journalctl -t anb-boot).
    exec > >(tee >(logger -t anb-boot)) 2>&1
    trap 'say "FAILED at line $LINENO: $BASH_COMMAND"' ERR
    say "booting release $RELEASE of stack $STACK"
    install -d -m 0755 /usr/local/lib/anb
    install -m 0700 "$0" "$SELF"
    # A statement sent to a database that vanished fails after ~100 s of retransmission,
    # not ~15 min (N19: sqlx cannot set TCP keepalive).
    echo 'net.ipv4.tcp_retries2 = 8' >/etc/sysctl.d/60-anb.conf
    sysctl -q -p /etc/sysctl.d/60-anb.conf || say "cannot set net.ipv4.tcp_retries2 here"
    install_tier
    say "ready"
}

main() {
    case "${1:-boot}" in
    boot) boot ;;
    write-env) write_env "$2" ;;
    *)
        echo "usage: $0 [boot | write-env SERVICE]" >&2
        exit 64
        ;;
    esac
}
