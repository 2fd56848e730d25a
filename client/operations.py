"""What a data owner does for each kind of instruction, free of Flower: one implementation for
both paths (in the ClientApp's process in simulation, in the owner worker in deployment).

:func:`handle` turns an :class:`Instruction` (what the ClientApp decoded from a Message) into an
:class:`Answer` (metrics, meta, protected payload); what of it leaves the owner, and what a failure
says, is decided by the release gate (``client/release.py``) on both paths.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from fedveil.client import owner_level
from fedveil.client.owner import Owner, OwnerIdentity, model_loads, round_number, run_key
from fedveil.client.release import dp_requested, release
from fedveil.client.protocol import (COMMITTEE_OPS, EVALSUM, KEYGEN, OPERATIONS, PUBKEY, REVEAL, ROUND_OPS, TRAIN,
                                     Answer, Instruction, decode_instruction, encode_answer, encode_error)
from fedveil.configs.schema import FedveilConfig, from_run_config
from fedveil.core import wire
from fedveil.core.console import progress
from fedveil.core.errors import Refusal
from fedveil.core.layout import LayoutMismatch
from fedveil.core.faults import maybe_die
from fedveil.core.payload import EVAL_PAIR, Protected, RoundContext
from fedveil.privacy.policy import load_policy
from fedveil.privacy.secagg import backend_spec


def handle(instruction: Instruction, identity: OwnerIdentity, cfg: FedveilConfig | None = None) -> Answer:
    """Carry out one instruction as ``identity``; a refusal or bad input raises a
    :class:`~fedveil.core.errors.Refusal` (any other exception: the release gate makes it a code)."""
    if instruction.op not in OPERATIONS:
        raise Refusal("config", f"unknown instruction '{instruction.op}': expected one of {list(OPERATIONS)}", key="op")
    cfg = cfg or from_run_config(instruction.run_config)
    if instruction.op == EVALSUM:
        return eval_mean(instruction, cfg, identity)
    if instruction.op not in ROUND_OPS + COMMITTEE_OPS:
        return key_setup(instruction, cfg, identity)  # bound to the run as every owner sees it
    if identity.model_path:  # the owner's own copy of the base model (its layout digest is what is checked)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=identity.model_path))
    if instruction.op in COMMITTEE_OPS:
        return committee_step(instruction, cfg, identity)
    return round_step(instruction, cfg, identity)


def checked_owner(instruction: Instruction, cfg: FedveilConfig, identity: OwnerIdentity) -> Owner:
    """The owner bound to this instruction, every input that does not need its data checked (``Owner()``:
    its policy, the round; the layout digest here); its backend takes the policy's view of other owners."""
    owner = Owner(cfg, identity, instruction.per_round)
    try:
        owner.layout.check(str(instruction.per_round.get(wire.LAYOUT_DIGEST, "")), "the server")
    except LayoutMismatch as exc:
        raise Refusal("layout", str(exc)) from exc
    if hasattr(owner.backend, "malicious_owners"):  # tenseal: whether a sum alone may be taken (policy.py)
        owner.backend.malicious_owners = owner.policy.malicious_owners
    if cfg.dp.name == "owner_level":  # tenseal: the owner's t counted in each sum it decrypts, decoded over gamma
        owner_level.floor_for(owner.backend, cfg, owner.policy)
    return owner


def committee_step(instruction: Instruction, cfg: FedveilConfig, identity: OwnerIdentity) -> Answer:
    """tenseal's verifier committee (``aggregation.download=committee``): reveal the nonce this owner committed
    to beside its last update, once it is shown that update's place in the round's set; or, as a member, sign
    the round's sum after checking every signed update (``tenseal/committee_round.py``). Neither reads the
    owner's data or opens its ε ledger; the reply is a nonce from the CSPRNG with a signature over it and the
    set's digest, or a signature over the sum of the round's (noised) updates."""
    owner = checked_owner(instruction, cfg, identity)
    steps = backend_spec(cfg.aggregation.name).committee
    if steps is None or getattr(cfg.aggregation, "download", None) != "committee":
        raise Refusal("config", f"{instruction.op}: this run's aggregation downloads no certified rounds",
                      key="aggregation.download")
    keys, at = instruction.keys, owner.ctx.round
    if instruction.op == REVEAL:
        nonce, signature = steps.reveal_nonce(owner.backend, at, _blob(keys, wire.REVEAL_QUERY))
        blob = {wire.NONCE: nonce, wire.REVEAL_SIGNATURE: signature}
    else:
        blob = {wire.ATTESTATION: steps.attest_round(owner.backend, _blob(keys, wire.COMMITTEE_UPDATES),
                                                     _blob(keys, wire.COMMITTEE_DRAFT))}
    meta = {wire.OWNER_ID: identity.owner_id, wire.LAYOUT_DIGEST: owner.layout.digest}
    return Answer(meta=meta, protected=Protected(blobs=blob))


def _blob(keys: dict, key: str) -> bytes:
    value = keys.get(key)
    if not isinstance(value, bytes) or not value:
        raise Refusal("config", f"the instruction lacks its '{key}' bytes", key=key)
    return value


def round_step(instruction: Instruction, cfg: FedveilConfig, identity: OwnerIdentity) -> Answer:
    """A train or evaluate instruction: every input is checked (``Owner()``, the layout digest, the
    global) before the owner's data is read (``owner.load_data``)."""
    owner = checked_owner(instruction, cfg, identity)
    # train in round r starts from the global after round r - 1; evaluate sees the one after round r
    after_round = owner.ctx.round - 1 if instruction.op == TRAIN else owner.ctx.round
    global_vector, reveal_seconds = owner.open_global(instruction.arrays, after_round)
    owner.load_data()
    meta = {wire.OWNER_ID: identity.owner_id, wire.LAYOUT_DIGEST: owner.layout.digest}
    timings = {} if owner.dp_on else {wire.REVEAL_SECONDS: reveal_seconds}  # no timings under DP
    if instruction.op == TRAIN:
        carried, sent_back = {}, None
        if instruction.per_round.get(wire.EVALUATE_FIRST):  # eval_in_train: round r - 1's evaluation rides here
            # its weight is the train reply's (an evaluation's own count would collide with it; under DP
            # nothing of it leaves: the release gate keeps weight 1 and cuts the pair)
            carried = {k: v for k, v in owner.evaluate(global_vector, after_round).items() if k != wire.NUM_EXAMPLES}
            # and the holder's hand-over of that same global (tenseal: the owner asked re-encrypts it)
            sent_back = owner.backend.after_evaluate(global_vector, instruction.per_round, identity.owner_id,
                                                     after_round)
        protected, metrics = owner.train_round(global_vector)
        steps = backend_spec(cfg.aggregation.name).committee
        if steps is not None and getattr(cfg.aggregation, "download", None) == "committee":
            # its nonce commitment beside the update: the committee is drawn from nonces revealed after the set
            protected = steps.contribute(owner.backend, owner.ctx.round, protected)
        return Answer({**carried, **metrics, **timings}, meta, joined(protected, sent_back, owner.held_out_pair))
    metrics = {**owner.evaluate(global_vector), **timings}
    # the backend's owner-side hooks (privacy/secagg/base.py:OwnerSide) answer the server's hand-over
    sent_back = owner.backend.after_evaluate(global_vector, instruction.per_round, identity.owner_id, after_round)
    if owner.backend.writes_final_adapter(instruction.per_round):
        owner.save_final_adapter(global_vector)
    meta.update(owner.sign_final_adapter(global_vector, instruction.per_round))  # the last round: signed result
    return Answer(metrics, meta, joined(sent_back, owner.held_out_pair))


def joined(*parts: Optional[Protected]) -> Optional[Protected]:
    """A reply's payload: what the round step made (the update; the hand-over's payload) and the owner's
    held-out pair (no DP), under keys that never meet (the pair's are prefixed: ``wire.EVAL_PAIR_PREFIX``)."""
    present = [p for p in parts if p is not None]
    if len(present) < 2:
        return present[0] if present else None
    return Protected(arrays={k: v for p in present for k, v in p.arrays.items()},
                     blobs={k: v for p in present for k, v in p.blobs.items()})


def eval_mean(instruction: Instruction, cfg: FedveilConfig, identity: OwnerIdentity) -> Answer:
    """The owner asked to reveal a round's held-out loss (tenseal, no DP): every signed pair checked,
    the token-weighted mean only in the reply (``privacy/secagg/tenseal/eval_pair.py``)."""
    if cfg.dp.name != "off":
        raise Refusal("config", "under DP the held-out loss is never revealed", key="dp.name")
    layout = str(instruction.per_round.get(wire.LAYOUT_DIGEST, ""))
    load_policy(identity.policy_file, named=identity.policy_path is not None).check(cfg, layout)  # the owner's say
    backend = backend_spec(cfg.aggregation.name).owner(cfg.aggregation, None, identity.keys, instruction.per_round,
                                                       run=run_key(cfg))
    ctx = RoundContext(round_number(instruction.per_round.get(wire.ROUND)), layout, identity.owner_id, EVAL_PAIR)
    pairs = Protected(blobs={k: v for k, v in instruction.keys.items() if isinstance(v, bytes)})
    mean = backend.reveal_eval_mean(pairs, ctx)
    return Answer({wire.EVAL_LOSS: mean}, {wire.OWNER_ID: identity.owner_id})


def key_setup(instruction: Instruction, cfg: FedveilConfig, identity: OwnerIdentity) -> Answer:
    """The owner's side of a backend's key set-up (``server/key_setup.py`` relays it)."""
    meta: dict[str, Any] = {wire.OWNER_ID: identity.owner_id}
    setup = backend_spec(cfg.aggregation.name).key_setup
    if setup is None:
        raise Refusal("config", f"aggregation '{cfg.aggregation.name}' has no key set-up; the server asked for one "
                      "by mistake", key="aggregation.name")
    keys = instruction.keys
    if instruction.op == PUBKEY:
        meta[wire.PUBLIC_KEY] = setup.announce(identity.keys)
        meta[wire.VERIFY_KEY] = identity.keys.member().verify_key
        # what it already holds for this run: a restarted coordinator resumes with it (never re-keys)
        held = setup.rejoin(identity.keys, run_key(cfg))
        meta.update({wire.HELD_PREFIX + k: v for k, v in held.items()})
        return Answer(meta=meta)
    if instruction.op == KEYGEN:
        owner_keys = {k[len(wire.PUBKEY_PREFIX):]: v for k, v in keys.items() if k.startswith(wire.PUBKEY_PREFIX)}
        made = setup.generate(cfg.aggregation, identity.keys, run_key(cfg), owner_keys)
        meta.update({wire.PUBLIC_CONTEXT: made.public, wire.SETUP_STATEMENT: made.statement,
                     wire.SETUP_SIGNATURE: made.signature,
                     **{f"{wire.SEALED_PREFIX}{o}": box for o, box in made.sealed.items()}})
        return Answer(meta=meta)
    signed = {k: keys.get(wire_key, b"") for k, wire_key in (("public", wire.PUBLIC_CONTEXT), ("sealed", wire.SEALED),
              ("statement", wire.SETUP_STATEMENT), ("signature", wire.SETUP_SIGNATURE))}  # absent: refused as unsigned
    setup.install(identity.keys, run_key(cfg), **signed)
    return Answer(meta=meta)


@dataclass
class WorkerState:
    """A worker's fixed identity; it answers framed requests (``client/protocol.py``) with :func:`handle`."""

    owner_id: str
    data_dir: str
    state_dir: str
    policy: Optional[str] = None
    max_epsilon: Optional[float] = None
    roster: Optional[str] = None
    model_path: Optional[str] = None
    party_keys: Optional[str] = None

    @property
    def identity(self) -> OwnerIdentity:
        return OwnerIdentity(self.owner_id, self.data_dir, self.state_dir, self.max_epsilon, self.policy, self.roster,
                             self.model_path, self.party_keys)

    def answer(self, request: bytes) -> bytes:
        """One framed request -> one framed answer, through the release gate (any failure included)."""
        loads, dp_on = model_loads(), True  # a request that cannot say counts as DP
        try:
            instruction = decode_instruction(request)
            dp_on = dp_requested(instruction.run_config)
            if instruction.op == TRAIN:
                maybe_die("worker-training", instruction.per_round.get(wire.ROUND), self.owner_id)
            outcome = handle(instruction, self.identity)
        except Exception as exc:  # noqa: BLE001 -- every failure leaves as a code (client/release.py)
            outcome = exc
        finally:
            if model_loads() > loads:
                progress(f"owner worker {self.owner_id}: model loaded ({model_loads()} load(s) in this process)")
        released = release(outcome, dp_on, f"owner worker {self.owner_id}")
        if released.is_error:
            return encode_error(released.error_code, released.reason)
        return encode_answer(released.metrics, released.meta, released.protected)
