"""kubeserve operator: InferenceServices into runtime Deployments behind a Service, rolled out and scaled.

One run for one InferenceService, controller-runtime's way: observe, compute the desired state purely, then apply.

    handlers (kopf) --events--> controller (work queue) --> plan.plan (pure) --> apply.Applier --> cluster (API)

- ``plan``: judges the spec (``spec``, ``validation``), renders the children (``manifests``), decides the rollout
  step (``rollout``, over ``analysis`` results) and computes the status (``status``, the one author of each field).
- ``apply``: applies the plan with the retry bookkeeping, writes the status's changes, posts Events.
- ``controller``: the loop between them: observes the indexes, plans, applies, keeps canary analyses running.

What kopf does here: the watches (with label selectors), the in-memory indexes of InferenceServices and their
Deployments, pods and HPAs (``summaries`` trims them), peering between operator replicas, the login, and posting
the Events ``apply`` asks for. What it does not: retries, back-off and the status are ``apply``'s (the handlers
return at once and never raise for a failed apply, so kopf's handler retries never run), and no handler uses
kopf's timers, daemons, finalizers or patches: kopf writes only its own bookkeeping (``status.kopf``, the
last-handled annotation).
"""
