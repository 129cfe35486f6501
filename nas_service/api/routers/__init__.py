"""One router per resource: architectures, search jobs, candidates, the catalog (tasks and
hypernetworks), and health (probes and metrics)."""
