
# ------------------------------------------------------------------------- worker tier
# The worker's grace after SIGTERM: it finishes the job in hand or hands it back to the
# queue within this time. systemd waits a minute longer before it kills anything, so a
# scale-in or a new release never cuts a job off midway and never loses one.
SHUTDOWN_GRACE_SECONDS=60

install_tier() {
    install_packages ffmpeg
    install_release worker
    write_settings worker <<SETTINGS
APP__WORKER__SHUTDOWN_GRACE=${SHUTDOWN_GRACE_SECONDS}s
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
