# shellcheck shell=bash
# Sourced by the scripts that boot real guests (ci/faults.sh, ci/soak.sh): `need_guest_image
# WHAT` builds the guest image (integration/guest/build-image.sh, idempotent). When it cannot be
# built: with CI=true that is a failure (exit 1); elsewhere WHAT is reported as skipped, with
# the reason, and the calling script ends with status 0.

need_guest_image() {
    local what=$1 log
    if log=$(bash integration/guest/build-image.sh 2>&1); then
        return 0
    fi
    printf '%s\n' "$log" | tail -5
    if [ "${CI:-}" = true ]; then
        echo "FAILED: $what: the guest image could not be built (see above)," \
            "and with CI=true a test that cannot run is a failure"
        exit 1
    fi
    echo "SKIPPED: $what: the guest image could not be built (see above)"
    exit 0
}
