"""Every name a fedveil Message carries, defined once (Flower-free, so owners and privacy code use it too).

Server -> owner (train and evaluate)::

    GLOBAL  ArrayRecord   the global adapter as the backend keeps it: clear ``{CLEAR_GLOBAL: vector}``,
                          or (encrypted global) the ciphertext arrays of ``privacy.secagg.tenseal.global_codec``
    CONFIG  ConfigRecord  the experiment's flat run config + the per-round keys below

Owner -> server (train)::

    UPDATE  ArrayRecord   the backend's clear arrays   (Protected.arrays)
    BLOBS   ConfigRecord  the backend's opaque bytes   (Protected.blobs)
    METRICS MetricRecord  NUM_EXAMPLES, TRAIN_LOSS, seconds, DP accounting (under DP only
                          DP_FIELDS and public sizes: client/release.py decides)
    META    ConfigRecord  LAYOUT_DIGEST, OWNER_ID

Owner -> server (evaluate)::

    METRICS MetricRecord  EVAL_SECONDS; NUM_EXAMPLES (held-out tokens) and EVAL_LOSS only where the
                          server sees counts (plain without DP); BLOBS: ENCRYPTED_GLOBAL and
                          GLOBAL_SIGNATURE (the owner's Ed25519 signature over it) when asked
    UPDATE/BLOBS          without DP, the owner's protected held-out pair (loss x tokens, tokens),
                          its keys prefixed EVAL_PAIR_PREFIX (never under DP: client/release.py)
    META    ConfigRecord  as above

Server -> one owner (tenseal, without DP: the server cannot decrypt the summed held-out pairs)::

    QUERY_EVALSUM  CONFIG (run config, ROUND, LAYOUT_DIGEST), KEYS: EVAL_PAIRS (the round's signed
                   pairs); the owner replies METRICS EVAL_LOSS, the token-weighted mean only

Owner -> server (any refusal or failure): a Flower ``Error`` whose code is 4000 + the index of
the refusal code in ``core.errors.REFUSAL_CODES`` and whose reason is ``<code> [key=value ...]``,
public parameters only (``client/release.py``).

Server -> owners (tenseal, ``aggregation.download=committee``; server/committee_exchange.py), after a round's
train replies::

    QUERY_REVEAL   CONFIG (run config, ROUND, LAYOUT_DIGEST), KEYS: REVEAL_QUERY (the owner's place in the
                   round's committed set); the owner replies BLOBS: NONCE (the nonce it committed to) and
                   REVEAL_SIGNATURE (its signature over that nonce and the set's digest)
    QUERY_ATTEST   to the committee's members only: KEYS: COMMITTEE_UPDATES (the round's signed updates) and
                   COMMITTEE_DRAFT (the set, the nonces, the committee); the member replies BLOBS: ATTESTATION
                   (its signature over the round's sum)

Key set-up queries (``QUERY_*``) carry KEYS (public keys, public context, the key holder's signed
set-up statement, sealed boxes).
The values are the on-the-wire spellings; they do not change without a migration.
"""

from __future__ import annotations

# --- records of a Message ------------------------------------------------------------------
GLOBAL, CONFIG, UPDATE, BLOBS, METRICS, META, KEYS = "global", "config", "update", "blobs", "metrics", "meta", "keys"

# --- per-round keys in CONFIG (everything else there is the experiment's run config) ----------
ROUND = "server-round"
LAYOUT_DIGEST = "layout-digest"
REENCRYPT_BY = "reencrypt-by"  # encrypted global: the owner asked to re-encrypt the new global
FINAL_ADAPTER = "final-adapter"  # encrypted global: owners write their final adapter this round
PARTY_KEYS = "party-keys"  # crypten: the aggregator parties' X25519 public keys, hex, comma-separated
SIGN_ADAPTER = "sign-adapter"  # the last evaluate: owners sign the global they evaluate (privacy/provenance.py)
EVALUATE_FIRST = "evaluate-first"  # eval_in_train: the owner evaluates the global it trains from, first
PER_ROUND_KEYS = (ROUND, LAYOUT_DIGEST, REENCRYPT_BY, FINAL_ADAPTER, PARTY_KEYS, SIGN_ADAPTER, EVALUATE_FIRST)

# --- META and KEYS ------------------------------------------------------------------------------
OWNER_ID = "client-id"
PUBLIC_KEY = "public-key"
VERIFY_KEY = "verify-key"  # pubkey reply: the owner's Ed25519 key (the server's own filter of signed payloads)
PUBLIC_CONTEXT = "public-context"
SETUP_STATEMENT = "setup-statement"  # keygen reply / install query: run, context id, sealed-box digests
SETUP_SIGNATURE = "setup-signature"  # the key holder's Ed25519 signature over SETUP_STATEMENT
HELD_PREFIX = "held."  # pubkey reply: the context an owner holds for the run (context; the key holder also
#                        public, statement, signature): a restarted coordinator resumes with it
SEALED = "sealed"  # one owner's sealed box in an install query
SEALED_PREFIX = "sealed."  # keygen reply: one sealed box per owner id
PUBKEY_PREFIX = "pubkey."  # keygen query: one X25519 public key per owner id
ADAPTER_STATEMENT = "adapter-statement"  # the last evaluate's reply: the owner's signed bundle over the final adapter

# --- arrays and blobs --------------------------------------------------------------------------
CLEAR_GLOBAL = "adapter"  # the flat float32 global adapter, where the server may hold it
ENCRYPTED_GLOBAL = "global-ct"  # blob an owner returns with Enc(new global) when asked
GLOBAL_SIGNATURE = "global-signature"  # its Ed25519 signature over (run, context id, round, ENCRYPTED_GLOBAL)
HANDED_BACK = (ENCRYPTED_GLOBAL, GLOBAL_SIGNATURE)  # an owner's answer to the holder's hand-over: never an update
EVAL_PAIR_PREFIX = "eval-pair."  # evaluate reply: the protected held-out pair's arrays and blobs
EVAL_PAIRS = "eval-pairs"  # QUERY_EVALSUM: the round's combined held-out pairs, for the owner that reveals the mean
REVEAL_QUERY = "reveal-query"  # QUERY_REVEAL: the owner's place in the round's committed set (committee.RevealQuery)
NONCE = "nonce"  # its reply: the nonce the owner committed to beside its update,
REVEAL_SIGNATURE = "reveal-signature"  # and its signature over the set it revealed for and that nonce
COMMITTEE_UPDATES = "committee-updates"  # QUERY_ATTEST: the round's signed updates (global_codec.RoundUpdates)
COMMITTEE_DRAFT = "committee-draft"  # QUERY_ATTEST: the certificate before its signatures (committee.Certificate)
ATTESTATION = "attestation"  # its reply: the member's signature over the round's sum

# --- op names: the Flower message types (the worker protocol's set: client/protocol.py) -----------
TRAIN, EVALUATE = "train", "evaluate"  # Flower's MessageType.TRAIN, MessageType.EVALUATE
PUBKEY, KEYGEN, INSTALL = "pubkey", "keygen", "install"  # key set-up: sent as QUERY_* (handlers: client/app.py)
QUERY_PUBKEY, QUERY_KEYGEN, QUERY_INSTALL = f"query.{PUBKEY}", f"query.{KEYGEN}", f"query.{INSTALL}"
EVALSUM = "evalsum"  # one owner reveals the round's token-weighted held-out loss (tenseal, no DP)
QUERY_EVALSUM = f"query.{EVALSUM}"
REVEAL, ATTEST = "reveal", "attest"  # tenseal's verifier committee: reveal a nonce; a member signs the round's sum
QUERY_REVEAL, QUERY_ATTEST = f"query.{REVEAL}", f"query.{ATTEST}"

# --- metrics -----------------------------------------------------------------------------------
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
TRAIN_STEPS = "train-steps"
TRAIN_SECONDS = "train-seconds"
PROTECT_SECONDS = "protect-seconds"
REVEAL_SECONDS = "reveal-seconds"
UPDATE_NORM = "update-norm"
EVAL_LOSS = "eval-loss"
EVAL_SECONDS = "eval-seconds"
DP_NOISE = "dp-noise-multiplier"
DP_SAMPLE_RATE = "dp-sample-rate"
DP_STEPS = "dp-steps"
DP_DELTA = "dp-delta"
DP_EPSILON = "dp-epsilon"
DP_BUDGET = "dp-budget"

# What an owner reports of its DP accounting -> its name in metrics.jsonl (the ledger stays home).
DP_FIELDS = {DP_NOISE: "noise_multiplier", DP_SAMPLE_RATE: "sample_rate", DP_STEPS: "steps",
             DP_DELTA: "delta", DP_EPSILON: "epsilon", DP_BUDGET: "epsilon_budget"}
