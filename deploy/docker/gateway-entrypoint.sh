#!/usr/bin/env bash
# A gateway pod on a cluster: join the pool's Ray cluster as a zero-resource node, then run the
# command given (`muxgate serve ...`) as a driver on that node.
#
# Why a local Ray node: the gateway streams tokens through a Serve DeploymentHandle, and Ray Client
# (ray://host:10001) does not support streaming handles, so the gateway must be a real driver, which
# needs a raylet on its own machine. --num-cpus=0 --num-gpus=0 keeps pool replicas off gateway pods.
#
# The two processes live and die together: if the local raylet dies (the Ray head restarted or was
# replaced), the gateway is stopped and the container exits non-zero, so Kubernetes restarts the pod
# and it joins the cluster again. On SIGTERM (pod shutdown) the gateway drains, then Ray stops.
#
# Environment:
#   MUXGATE_RAY_ADDRESS       the head's GCS address, host:port (required), e.g. muxgate-pool-head-svc:6379
#   MUXGATE_RAY_OBJECT_STORE  object store bytes for this node (default 100000000; the gateway stores
#                             almost nothing there, and /dev/shm in a pod is small)
#   MUXGATE_RAY_WAIT_S        how long to wait for the local raylet (default 120)
set -euo pipefail

: "${MUXGATE_RAY_ADDRESS:?set MUXGATE_RAY_ADDRESS to the Ray head GCS address (host:port)}"
if [ "$#" -eq 0 ]; then
  echo "usage: gateway-entrypoint.sh muxgate serve --config FILE --ray-address ADDR" >&2
  exit 2
fi

ray start --address="${MUXGATE_RAY_ADDRESS}" --num-cpus=0 --num-gpus=0 \
  --object-store-memory="${MUXGATE_RAY_OBJECT_STORE:-100000000}" --disable-usage-stats --block &
ray_pid=$!

# `muxgate serve` may only start once this node's raylet is registered: a driver attaches to the
# raylet of its own machine. The dashboard agent answers this endpoint once the raylet is healthy.
deadline=$((SECONDS + ${MUXGATE_RAY_WAIT_S:-120}))
until python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:52365/api/local_raylet_healthz', timeout=2)" 2>/dev/null; do
  if ! kill -0 "${ray_pid}" 2>/dev/null; then
    echo "gateway-entrypoint: ray start failed (is ${MUXGATE_RAY_ADDRESS} reachable, same Ray/Python version?)" >&2
    exit 1
  fi
  if [ "${SECONDS}" -ge "${deadline}" ]; then
    echo "gateway-entrypoint: local raylet not healthy after ${MUXGATE_RAY_WAIT_S:-120}s" >&2
    kill -TERM "${ray_pid}" 2>/dev/null || true
    exit 1
  fi
  sleep 1
done

"$@" &
gateway_pid=$!
stopping=0
trap 'stopping=1; kill -TERM "${gateway_pid}" 2>/dev/null || true' TERM INT

# Whichever of the two exits first (or a signal) ends the wait; they are this shell's only children.
set +e
wait -n
if [ "${stopping}" = 0 ] && kill -0 "${gateway_pid}" 2>/dev/null; then
  echo "gateway-entrypoint: the local Ray node exited; stopping the gateway so the pod restarts" >&2
  kill -TERM "${gateway_pid}" 2>/dev/null
fi
wait "${gateway_pid}"
gateway_rc=$?
ray stop --force >/dev/null 2>&1
wait "${ray_pid}" 2>/dev/null
set -e
if [ "${stopping}" = 1 ]; then
  exit 0
fi
# Not asked to stop: either process ending is a failure worth a restart.
if [ "${gateway_rc}" -eq 0 ]; then
  exit 1
fi
exit "${gateway_rc}"
