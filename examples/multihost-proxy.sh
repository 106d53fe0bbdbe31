#!/bin/sh
# dockmesh's proxy on host1 balancing a swarm service's tasks spread over the lab's hosts.
# Needs a lab with a shared catalog: `dockmesh lab up --hosts 3` (DOCKMESH_LAB names another
# lab). Makes an overlay `mhp_ov`, a service `mhp-web` (3 replicas, one a host) and the proxy
# container `mhp-proxy` on host1 (on the overlay, published on host1's 127.0.0.1:18080), shows
# the balancing and a task leaving and coming back, then removes all three, on failure too.
set -eu

on() { host=$1; shift; dockmesh lab exec "$host" -- "$@"; }
ask() { on host1 curl -s -m 5 http://127.0.0.1:18080/id; }   # the proxy, from host1
round() { for _ in 1 2 3 4 5 6; do ask; done | sort | uniq -c; }

cleanup() {
    on host1 docker rm -f mhp-proxy >/dev/null 2>&1 || true
    on host1 docker service rm mhp-web >/dev/null 2>&1 || true
    for _ in $(seq 30); do
        on host1 docker network rm mhp_ov >/dev/null 2>&1 && break
        sleep 1
    done
}
trap cleanup EXIT

host1=$(dockmesh lab status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["hosts"][0]["address"])')

echo "# an overlay, and a service of 3 tasks on it, one a host; each task's container says its port"
on host1 docker network create -d overlay --attachable mhp_ov >/dev/null
on host1 docker service create -d -q --name mhp-web --replicas 3 --replicas-max-per-node 1 \
    --network mhp_ov \
    --container-label dockmesh.port=8080 \
    --container-label dockmesh.check.http=/ok --container-label dockmesh.check.interval=1s \
    dockmesh/toolbox sh -c 'mkdir -p /w && echo ok >/w/ok && hostname >/w/id && exec httpd -f -p 8080 -h /w' \
    >/dev/null 2>&1
i=0
until [ "$(on host1 dig +short mhp-web.service.dockmesh | wc -l)" = 3 ]; do
    i=$((i + 1)); [ $i -lt 120 ] || { echo "the 3 tasks never passed" >&2; exit 1; }
    sleep 1
done
for h in host1 host2 host3; do
    echo "\$ dockmesh lab exec $h -- curl -s localhost:8500/v1/health/service/mhp-web?passing"
    on "$h" curl -s 'http://127.0.0.1:8500/v1/health/service/mhp-web?passing' | python3 -c '
import json, sys
for r in sorted(json.load(sys.stdin), key=lambda r: r["Service"]["ID"]):
    s = r["Service"]
    node = s["Meta"].get("node", "(this host)")
    print("  %-44s %s:%s  node %s" % (s["ID"], s["Address"], s["Port"], node))'
done

echo "# the proxy: on host1, on the overlay, following host1's agent at $host1:8500"
on host1 docker run -d -q --name mhp-proxy --network mhp_ov -p 127.0.0.1:18080:8080 \
    dockmesh/python dockmesh proxy --service mhp-web --agent "http://$host1:8500" \
    --listen 0.0.0.0:8080 >/dev/null
i=0
until ask >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 60 ] || { echo "the proxy never answered" >&2; exit 1; }
    sleep 1
done
echo "\$ 6 x curl 127.0.0.1:18080/id on host1   # replies by task (its hostname)"
round

sick=$(on host2 docker ps -q -f label=com.docker.swarm.service.name=mhp-web)
echo "# host2's task $sick fails its check (its /ok removed)"
on host2 docker exec "$sick" rm /w/ok
sleep 2
round
echo "# passes again"
on host2 docker exec "$sick" sh -c 'echo ok >/w/ok'
sleep 2
round
