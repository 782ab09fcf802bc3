#!/usr/bin/env bash
# Applies tuning/sysctl.conf to this host, idempotently, and undoes it.
#
#   tuning/apply.sh             show what --apply would change (nothing is written)
#   tuning/apply.sh --apply     write the values (root), save the old ones, install the
#                               /etc/sysctl.d drop-in so they survive a reboot
#   tuning/apply.sh --undo      restore the saved values and remove the drop-in
#                               (add --dry-run to only show it)
# Options:
#   --root DIR      prefix for /proc/sys, /etc and /var/lib (env COINBIT_TUNING_ROOT); tests
#                   point it at a temp tree
#   --config FILE   settings to apply [default: sysctl.conf beside this script]
#   --state FILE    where the old values are kept [default: ROOT/var/lib/coinbit/tuning.state]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=${COINBIT_TUNING_ROOT:-}
config=$here/sysctl.conf
state=
mode=show
dry_run=0

usage() { sed -n '2,15s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
die() { echo "apply.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case $1 in
        --apply) mode=apply ;;
        --undo) mode=undo ;;
        --dry-run) dry_run=1 ;;
        --root) [ $# -ge 2 ] || die "--root needs a directory"; root=$2; shift ;;
        --root=*) root=${1#--root=} ;;
        --config) [ $# -ge 2 ] || die "--config needs a file"; config=$2; shift ;;
        --config=*) config=${1#--config=} ;;
        --state) [ $# -ge 2 ] || die "--state needs a file"; state=$2; shift ;;
        --state=*) state=${1#--state=} ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

root=${root%/}
state=${state:-$root/var/lib/coinbit/tuning.state}
dropin=$root/etc/sysctl.d/60-coinbit.conf
[ -r "$config" ] || die "cannot read $config"
if [ "$mode" = show ] || [ "$dry_run" = 1 ]; then
    writing=0
else
    writing=1
    if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then
        die "--$mode writes /proc/sys and /etc: run it as root (or give --root DIR)"
    fi
fi

# /proc/sys path of a dotted key.
path_of() { printf '%s/proc/sys/%s' "$root" "${1//.//}"; }
# Whitespace collapsed to single spaces, trimmed: how values are compared and saved.
norm() { tr -s ' \t\n' '   ' | sed 's/^ //; s/ $//'; }
# `key<TAB>value` for each setting of the config.
settings() {
    sed -e 's/#.*//' "$config" | while IFS='=' read -r key value; do
        key=$(printf '%s' "$key" | norm)
        [ -n "$key" ] || continue
        printf '%s\t%s\n' "$key" "$(printf '%s' "$value" | norm)"
    done
}
# The saved original of a key, if any.
saved() { [ -f "$state" ] && awk -F'\t' -v k="$1" '$1 == k { print $2; found = 1; exit } END { exit !found }' "$state"; }
write() { printf '%s\n' "$2" > "$(path_of "$1")"; }

do_apply() {
    local changes=0 key want path now
    [ "$writing" = 0 ] || mkdir -p "$(dirname "$state")"
    while IFS=$'\t' read -r key want; do
        path=$(path_of "$key")
        if [ ! -e "$path" ]; then
            echo "$key: not on this kernel, skipped"
            continue
        fi
        now=$(norm < "$path")
        if [ "$now" = "$want" ]; then
            echo "$key = $now (unchanged)"
            continue
        fi
        changes=$((changes + 1))
        echo "$key = $now -> $want"
        if [ "$writing" = 1 ]; then
            # Keep the first original: a second --apply must not save our own values.
            saved "$key" > /dev/null || printf '%s\t%s\n' "$key" "$now" >> "$state"
            write "$key" "$want"
        fi
    done < <(settings)
    if ! cmp -s "$config" "$dropin"; then
        changes=$((changes + 1))
        echo "install $dropin (the same values at boot)"
        if [ "$writing" = 1 ]; then
            if ! saved @dropin > /dev/null; then
                if [ -e "$dropin" ]; then
                    cp "$dropin" "$state.dropin"
                    printf '@dropin\treplaced\n' >> "$state"
                else
                    printf '@dropin\tcreated\n' >> "$state"
                fi
            fi
            mkdir -p "$(dirname "$dropin")"
            cp "$config" "$dropin"
        fi
    fi
    if [ "$writing" = 1 ]; then
        echo "applied: $changes change(s); old values in $state (undo: $0 --undo${root:+ --root $root})"
    else
        echo "dry run: $changes change(s); run with --apply to make them"
    fi
}

do_undo() {
    local key old path now
    if [ ! -f "$state" ]; then
        echo "nothing to undo: no $state"
        return
    fi
    while IFS=$'\t' read -r key old; do
        if [ "$key" = @dropin ]; then
            if [ "$old" = replaced ]; then
                echo "restore $dropin"
                [ "$writing" = 0 ] || cp "$state.dropin" "$dropin"
            else
                echo "remove $dropin"
                [ "$writing" = 0 ] || rm -f "$dropin"
            fi
            continue
        fi
        path=$(path_of "$key")
        now=$(norm < "$path" 2> /dev/null || echo '?')
        echo "$key = $now -> $old"
        [ "$writing" = 0 ] || write "$key" "$old"
    done < "$state"
    if [ "$writing" = 1 ]; then
        rm -f "$state" "$state.dropin"
        echo "undone"
    else
        echo "dry run: run without --dry-run to restore"
    fi
}

case $mode in
    show|apply) do_apply ;;
    undo) do_undo ;;
esac
