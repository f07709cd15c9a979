
# ------------------------------------------------------------------------- worker tier
# The worker's grace after SIGTERM: it finishes the job in hand or hands it back to the
# queue within this time. systemd waits a minute longer before it kills anything, so a
# scale-in or a new release never cuts a job off midway and never loses one.
SHUTDOWN_GRACE_SECONDS=60
# A worker whose instance the group terminates (scale-in, a refresh) sees it in the
# instance metadata, takes no new job, finishes the one in hand (whatever its length:
# the hook holds the instance, see ARCHITECTURE.md) and tells the hook to go on.
WORKER_GROUP='{{worker_group}}'
DRAIN_HOOK='{{drain_hook}}'
# How long a received job stays hidden: the queue's (queue.visibility_timeout). The worker
# extends it every third of it while it works, so a job whose instance lost power comes
# back after at most this long.
VISIBILITY_TIMEOUT_SECONDS='{{visibility_timeout}}'

install_tier() {
    install_packages ffmpeg
    install_release worker
    write_settings worker <<SETTINGS
APP__WORKER__SHUTDOWN_GRACE=${SHUTDOWN_GRACE_SECONDS}s
APP__WORKER__AUTOSCALING_GROUP=${WORKER_GROUP}
APP__WORKER__LIFECYCLE_HOOK=${DRAIN_HOOK}
APP__WORKER__VISIBILITY_TIMEOUT=${VISIBILITY_TIMEOUT_SECONDS}s
SETTINGS
    # Type=notify: up once it says so; the watchdog restarts a worker whose poll loop
    # stopped (it feeds it twice a minute from that loop, through jobs of any length).
    install_unit worker "KillMode=mixed
TimeoutStopSec=$((SHUTDOWN_GRACE_SECONDS + 60))
Type=notify
TimeoutStartSec=300
WatchdogSec=60"
    install_log_agent "-u anb-worker"
}

main "$@"
