#!/bin/sh
# The chapter's multi-host section on one machine: three Docker hosts as a swarm (`dockmesh
# lab`), an overlay network across them, a service whose three tasks spread over the nodes,
# and discovery by name from every host — through each host's dockmesh agent (the catalog
# shared through the lab's etcd) and, beside it, Swarm's own DNS inside a container.
#
#   sh examples/multihost.sh            # builds it, shows it, removes it
#   sh examples/multihost.sh --keep     # leaves the lab up to explore (`dockmesh lab down`)
#
# Run it as root from the repository (`.venv` made by scripts/setup.sh, the images built).
# The lab is named $DOCKMESH_LAB (default: mh); it is removed on failure too.
set -eu

cd "$(dirname "$0")/.."
DM="${DM:-.venv/bin/dockmesh}"
LAB="${DOCKMESH_LAB:-mh}"
export DOCKMESH_LAB="$LAB"
IMAGE=dockmesh/toolbox
keep=""
[ "${1:-}" = "--keep" ] && keep=1

on_exit() {
    rc=$?
    if [ "$rc" -ne 0 ] || [ -z "$keep" ]; then
        echo "\$ dockmesh lab down"
        "$DM" lab down
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

show() {
    line=""
    for a in "$@"; do
        case "$a" in *[[:space:]\'\"\|\;\$\{\}]*) a="'$a'" ;; esac
        line="$line $a"
    done
    echo "\$${line}" | sed "s|^\\\$ $DM |\$ dockmesh |"
    "$@"
}
on() { h=$1; shift; show "$DM" lab exec "$h" -- "$@"; }

# 1. Three hosts: host1 the swarm's manager, host2 and host3 workers; etcd; an agent each.
show "$DM" lab up --hosts 3 --image "$IMAGE"

# 2. An overlay network across the swarm, attachable so plain containers may join it too.
on host1 docker network create --driver overlay --attachable web-net

# 3. A service of three tasks, one per node; each task's container carries the labels that
#    make it an instance of `web` in the dockmesh catalog of the host it runs on.
on host1 docker service create --detach --quiet --name web --replicas 3 \
    --replicas-max-per-node 1 --network web-net --no-resolve-image \
    --container-label dockmesh.service=web --container-label dockmesh.port=8080 \
    "$IMAGE" >/dev/null
echo "(waiting for the three tasks to run)"
for _ in $(seq 120); do
    n=$("$DM" lab exec host1 -- docker service ls --filter name=web --format '{{.Replicas}}')
    case "$n" in "3/3"*) break ;; esac
    sleep 0.5
done
case "$n" in "3/3"*) ;; *) echo "web did not reach 3/3 replicas (now $n)" >&2; exit 1 ;; esac
on host1 docker service ps web --format '{{.Name}} {{.Node}} {{.CurrentState}}'

# 4. Discovery by name from every host: each host's agent answers for all three tasks (its
#    own from its engine, the others' from the shared catalog), with their overlay addresses.
for h in host1 host2 host3; do
    for _ in $(seq 50); do
        [ "$("$DM" lab exec "$h" -- dig +short web.service.dockmesh | wc -l)" -ge 3 ] && break
        sleep 0.2
    done
    on "$h" sh -c 'dig +short web.service.dockmesh | sort -V'
done
on host2 sh -c 'dig +short web.service.dockmesh SRV | sort'

# 5. The same addresses reached over the overlay from a container on host3, and Swarm's own
#    name for the tasks (`tasks.web`, Docker's embedded DNS) beside them.
addrs=$("$DM" lab exec host3 -- dig +short web.service.dockmesh | sort -V | tr '\n' ' ')
on host3 docker run --rm --network web-net "$IMAGE" sh -c \
    "nslookup tasks.web 2>/dev/null | grep -A9 '^Name' | grep Address | sort -V; \
     for a in $addrs; do echo \$a → \$(wget -qO- http://\$a:8080/id); done"

# 6. The catalog follows the swarm: scaled to 2, the third task's address leaves every host.
on host1 docker service scale --detach web=2 >/dev/null
for _ in $(seq 100); do
    [ "$("$DM" lab exec host1 -- dig +short web.service.dockmesh | wc -l)" -eq 2 ] && break
    sleep 0.1
done
on host1 sh -c 'dig +short web.service.dockmesh | sort -V'
show "$DM" lab status
