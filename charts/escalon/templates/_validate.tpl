{{/*
Invariants values.schema.json cannot express. Each failure names the key to fix.
Included once, from configmap.yaml, which every release renders.
*/}}
{{- define "escalon.validate" -}}
{{- $v := .Values -}}

{{- if le (int $v.terminationGracePeriodSeconds) (int $v.graceSeconds) -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed graceSeconds (%v): Kubernetes would kill pods mid-drain" $v.terminationGracePeriodSeconds $v.graceSeconds) -}}
{{- end -}}

{{- range $name, $c := include "escalon.components" . | fromYaml -}}
{{- $a := $c.values.autoscaling -}}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- fail (printf "%s.autoscaling: minReplicas (%v) must be <= maxReplicas (%v)" $name $a.minReplicas $a.maxReplicas) -}}
{{- end -}}
{{- if and $a.enabled $a.inFlight $a.inFlight.enabled (not $v.metrics.enabled) -}}
{{- fail (printf "%s.autoscaling.inFlight needs metrics.enabled: the calls in flight are read from /metrics" $name) -}}
{{- end -}}
{{- end -}}

{{- $tiers := include "escalon.tiers" . | fromYaml -}}
{{- if not $tiers -}}
{{- fail "tiers: enable at least one tier, or the router has nothing to route to" -}}
{{- end -}}
{{- range $name, $t := $tiers -}}
{{- $local := has $t.backend (list "local-gguf" "hf") -}}
{{- if and $local (not $t.price) -}}
{{- fail (printf "tiers.%s: a %s tier needs price (inputPer1M, outputPer1M); only remote tiers of known provider models take the price map's" $name $t.backend) -}}
{{- end -}}
{{- if $local -}}
{{- $a := required (printf "tiers.%s.autoscaling is required for a %s tier" $name $t.backend) $t.autoscaling -}}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) -}}
{{- fail (printf "tiers.%s.autoscaling: minReplicas (%v) must be <= maxReplicas (%v)" $name $a.minReplicas $a.maxReplicas) -}}
{{- end -}}
{{- $r := required (printf "tiers.%s.resources is required for a %s tier" $name $t.backend) $t.resources -}}
{{- $gpus := int ($r.gpus | default 0) -}}
{{- if and (eq $t.accelerator "gpu") (lt $gpus 1) -}}
{{- fail (printf "tiers.%s: accelerator gpu needs resources.gpus >= 1 (got %d)" $name $gpus) -}}
{{- end -}}
{{- if and (ne $t.accelerator "gpu") (gt $gpus 0) -}}
{{- fail (printf "tiers.%s: resources.gpus is %d but accelerator is %s; set accelerator: gpu" $name $gpus ($t.accelerator | default "cpu")) -}}
{{- end -}}
{{- else -}}
{{- if and $t.apiKeyEnv (not $v.providerKeys.existingSecret) -}}
{{- fail (printf "tiers.%s reads its key from %s: set providerKeys.existingSecret to the Secret holding it" $name $t.apiKeyEnv) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- if $v.distill.enabled -}}
{{- $d := $v.distill -}}
{{- if not (or $d.broker.existingSecret $d.broker.url $v.redis.enabled) -}}
{{- fail "distill needs a broker: set redis.enabled=true (bundled) or distill.broker.url / distill.broker.existingSecret" -}}
{{- end -}}
{{- if not (or $d.database.existingSecret $d.database.url $v.postgresql.enabled) -}}
{{- fail "distill needs a database: set postgresql.enabled=true (bundled) or distill.database.url / distill.database.existingSecret" -}}
{{- end -}}
{{- range $key := list "broker" "resultBackend" "database" -}}
{{- if regexMatch "://[^/@]*:[^/@]+@" ((index $d $key).url | default "") -}}
{{- fail (printf "distill.%s.url carries a password: put the URL in a Secret and set distill.%s.existingSecret" $key $key) -}}
{{- end -}}
{{- end -}}
{{- range $queue, $w := $d.workers -}}
{{- if $w.enabled -}}
{{- $a := $w.autoscaling -}}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- fail (printf "distill.workers.%s.autoscaling: minReplicas (%v) must be <= maxReplicas (%v)" $queue $a.minReplicas $a.maxReplicas) -}}
{{- end -}}
{{- if and $a.enabled (not $d.keda.enabled) (lt (int $a.minReplicas) 1) -}}
{{- fail (printf "distill.workers.%s.autoscaling.minReplicas is 0: scaling to zero needs distill.keda.enabled=true" $queue) -}}
{{- end -}}
{{- $tgps := int ($w.terminationGracePeriodSeconds | default $v.terminationGracePeriodSeconds) -}}
{{- if le $tgps (int $v.graceSeconds) -}}
{{- fail (printf "distill.workers.%s.terminationGracePeriodSeconds (%d) must exceed graceSeconds (%v)" $queue $tgps $v.graceSeconds) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and $d.keda.enabled (eq $d.broker.kind "redis") (not (or $d.keda.redisAddress $v.redis.enabled)) -}}
{{- fail "distill.keda.redisAddress is required with an external Redis broker: KEDA reads queue depth from it" -}}
{{- end -}}
{{- end -}}
{{- end -}}
