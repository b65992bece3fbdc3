"""Spec validation and linking: what a submission must satisfy, and the node graph it becomes.

Owns :class:`NodeSpec` (a node as the edge converted it from the protocol),
:class:`InvalidFlowSpec` (the one error a bad submission raises, naming the
node and field) and :func:`validate_and_link`, which checks every rule and
builds the linked :class:`~fleetflow_coordinator.core.model.NodeRecord` list
(dependencies, consumers, pending counts) that the rest of the core walks.
Submission and restore both go through it, so a stored spec is held to the
same rules as a new one. Pure: no state beyond its arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fleetflow_coordinator.core.model import Arg, ArgKind, NodeRecord
from fleetflow_coordinator.core.retry import RetryPolicy

__all__ = ["InvalidFlowSpec", "NodeSpec", "validate_and_link"]


class InvalidFlowSpec(ValueError):
    """A submitted flow breaks a rule; the message names the node and field."""


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A node of a submission, already converted from the protocol."""

    task_name: str
    is_map: bool
    args: list[Arg]
    resources: dict[str, float]
    retries: int = 0
    retry_delay_s: float = 0.0
    timeout_s: float = 0.0
    retry_delays_s: tuple[float, ...] = ()
    backoff: float = 1.0
    max_delay_s: float = 0.0
    jitter: float = 0.0
    tags: tuple[str, ...] = ()
    concurrency_limit: int = 0
    pool: str = "default"
    #: The task's code version ("" any); see NodeRecord.fingerprint.
    fingerprint: str = ""


def validate_and_link(nodes: list[NodeSpec], output_node: int | None) -> list[NodeRecord]:
    """Check every rule of a submission and build linked node records.

    Raises:
        InvalidFlowSpec: naming ``nodes[i]`` (task) and the field that broke a rule.
    """
    records: list[NodeRecord] = []
    policies: dict[tuple, RetryPolicy] = {}
    for i, spec in enumerate(nodes):
        where = f"nodes[{i}] ({spec.task_name or '?'})"
        if not spec.task_name:
            raise InvalidFlowSpec(f"{where}.task_name: must not be empty")
        for resource, amount in spec.resources.items():
            if not resource:
                raise InvalidFlowSpec(f"{where}.resources: names must not be empty")
            if not math.isfinite(amount) or amount < 0:
                raise InvalidFlowSpec(
                    f"{where}.resources[{resource!r}] = {amount}: must be finite and >= 0"
                )
        if not 0 <= spec.jitter <= 1:
            raise InvalidFlowSpec(f"{where}.retry.jitter = {spec.jitter}: must be in [0, 1]")
        for field, value in (
            ("retry_delay_seconds", spec.retry_delay_s),
            ("timeout_seconds", spec.timeout_s),
            ("retry.backoff", spec.backoff),
            ("retry.max_delay_seconds", spec.max_delay_s),
            *(("retry.retry_delays_seconds", d) for d in spec.retry_delays_s),
        ):
            if not math.isfinite(value) or value < 0:
                raise InvalidFlowSpec(f"{where}.{field} = {value}: must be finite and >= 0")
        record = NodeRecord(
            i,
            spec.task_name,
            spec.is_map,
            list(spec.args),
            dict(spec.resources),
            spec.retries,
            spec.retry_delay_s,
            spec.timeout_s,
        )
        # Nodes mostly share a policy: build each distinct one once.
        policy_key = (
            spec.retries,
            spec.retry_delay_s,
            tuple(spec.retry_delays_s),
            spec.backoff or 1.0,
            spec.max_delay_s,
            spec.jitter,
        )
        policy = policies.get(policy_key)
        if policy is None:
            policy = policies[policy_key] = RetryPolicy(*policy_key)
        record.policy = policy
        record.tags = tuple(spec.tags)
        record.concurrency_limit = spec.concurrency_limit
        record.pool = spec.pool or "default"
        record.fingerprint = spec.fingerprint
        names = set()
        literal_lengths = set()
        whole: set[int] = set()
        items: set[int] = set()
        for arg in spec.args:
            field = f"{where}.args[{arg.name!r}]"
            if not arg.name:
                raise InvalidFlowSpec(f"{where}.args: every argument needs a name")
            if arg.name in names:
                raise InvalidFlowSpec(f"{field}: given twice")
            names.add(arg.name)
            if arg.mapped and not spec.is_map:
                raise InvalidFlowSpec(f"{field}.mapped: only map nodes iterate arguments")
            if arg.mapped and arg.kind not in (ArgKind.LITERAL_ITEMS, ArgKind.NODE):
                raise InvalidFlowSpec(
                    f"{field}.mapped: a mapped argument is literal_items or one upstream node"
                )
            if arg.kind == ArgKind.LITERAL_ITEMS:
                if not arg.mapped:
                    raise InvalidFlowSpec(f"{field}.literal_items: needs mapped=true")
                literal_lengths.add(len(arg.payload))
            refs = arg.payload if arg.kind == ArgKind.NODES else [arg.payload]
            if arg.kind in (ArgKind.NODE, ArgKind.NODES):
                if arg.kind == ArgKind.NODES and not refs:
                    raise InvalidFlowSpec(f"{field}.nodes: must not be empty")
                for ref in refs:
                    if not isinstance(ref, int) or not 0 <= ref < i:
                        raise InvalidFlowSpec(
                            f"{field}: refers to node {ref}; a node may only use earlier nodes"
                        )
                    if arg.kind == ArgKind.NODES and records[ref].is_map:
                        raise InvalidFlowSpec(
                            f"{field}.nodes: node {ref} is a map; pass a map node directly"
                        )
                if arg.mapped and records[arg.payload].is_map:
                    items.add(arg.payload)
                else:
                    whole.update(refs)
                    if arg.mapped:
                        records[arg.payload].split = True
        if spec.is_map:
            if not any(a.mapped for a in spec.args):
                raise InvalidFlowSpec(
                    f"{where}.args: a map node needs at least one mapped argument"
                )
            if len(literal_lengths) > 1:
                raise InvalidFlowSpec(f"{where}.args: mapped constant lists differ in length")
        record.whole_deps = sorted(whole)
        record.item_deps = sorted(items)
        record.whole_pending = len(whole)
        for u in whole:
            records[u].whole_consumers.append(i)
        for u in items:
            records[u].item_consumers.append(i)
        records.append(record)
    for i, spec in enumerate(nodes):
        for arg in spec.args:
            if arg.kind == ArgKind.NODES and any(records[u].split for u in arg.payload):
                raise InvalidFlowSpec(
                    f"nodes[{i}] ({spec.task_name}).args[{arg.name!r}]: a gathered node is also "
                    "mapped over elsewhere; pass it directly instead of inside a list"
                )
    if output_node is not None and not 0 <= output_node < len(records):
        raise InvalidFlowSpec(f"output_node = {output_node}: no such node")
    return records
