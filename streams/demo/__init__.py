"""``consent-stream demo``: the service's main job on the local stack (``command``), with
its workload, children, warm-up, request tracking and summary."""
