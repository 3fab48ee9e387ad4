"""Arrow schemas of every table in a run directory: the one place the run format is defined."""

from __future__ import annotations

import pyarrow as pa

#: Bumped whenever a table gains, loses or changes a column. Readers refuse newer versions.
SCHEMA_VERSION = 5

#: One row per log-prob row (a row of a ``Categorical.log_prob`` result).
SAMPLES = pa.schema(
    [
        ("cycle", pa.int32()),
        ("seq", pa.int32()),  # optimizer steps taken (all watched optimizers) before the call
        ("phase", pa.string()),  # 'sampling' | 'update' | 'eval'
        ("actor", pa.string()),
        ("dist_id", pa.int64()),
        ("head", pa.int16()),  # 0, or k for the k-th further Categorical of one forward (v2)
        ("call_id", pa.int64()),
        ("call_rows", pa.int32()),  # rows of that log_prob call: the B of a mean-reduced loss
        ("fingerprint", pa.int64()),  # null when the input could not be fingerprinted
        # the hash of the entry's first direct child's input where that is another tensor (v4):
        # SB3's policy(obs) runs features_extractor(preprocess_obs(obs)), where its update enters
        ("fingerprint_inner", pa.int64()),
        ("action", pa.int64()),
        ("logp", pa.float32()),
        ("grad_logp", pa.float32()),  # dLoss/dlogp; null when no gradient reached the row
        # the backward pass that brought it: log_prob calls made before it arrived; null: none (v3)
        ("grad_pass", pa.int64()),
        # which categories the row's logits mask (<= -1e7): 0 none; a bitmask for K <= 63, else a
        # hash (v5). Tells apart samples of one (input, action) drawn under different masks
        ("mask", pa.int64()),
        ("logits", pa.list_(pa.float32())),  # normalized logits, null when K > keep_logits_max_k
    ]
)

#: One row per ``Categorical`` construction seen while watching.
DISTS = pa.schema(
    [
        ("dist_id", pa.int64()),
        ("cycle", pa.int32()),
        ("seq", pa.int32()),
        ("grad_enabled", pa.bool_()),
        ("sampled", pa.bool_()),  # sample() was called on it (v3): a sampling one in any grad mode
        ("actor", pa.string()),
        ("entry", pa.string()),  # module whose input was fingerprinted; null if none
        ("head", pa.int16()),  # 0, or k for the k-th further Categorical of one forward (v2)
        ("batch_shape", pa.list_(pa.int32())),
        ("rows", pa.int32()),
        ("n_categories", pa.int32()),
        ("masked_mean", pa.float32()),  # mean count of categories with logit <= -1e7 per row
        ("logit_spread", pa.float32()),  # mean over rows of the std of unmasked logits
        ("entropy", pa.float32()),  # mean over rows
        ("entropy_norm", pa.float32()),  # mean over rows of H / log(K_eff)
        ("nonfinite_rows", pa.int32()),  # rows with a NaN or +Inf logit (skipped by the means) (v2)
        ("logits_require_grad", pa.bool_()),
        ("input_mutated", pa.bool_()),  # the fingerprinted input changed in place before use
        ("grad_entropy", pa.float32()),  # mean dLoss/dH per row; null if no gradient
    ]
)

#: One row per optimizer step.
STEPS = pa.schema(
    [
        ("step", pa.int32()),  # global sequence over all watched optimizers
        ("cycle", pa.int32()),
        ("optimizer", pa.int16()),
        ("optimizer_class", pa.string()),
        ("holds_actor", pa.bool_()),
        ("n_params", pa.int32()),
        ("lr", pa.float64()),  # param group 0
        ("grad_norm", pa.float64()),
        ("delta_norm", pa.float64()),
        ("outside_delta_norm", pa.float64()),  # change since this tensor's last step; null at first
        ("wall_time", pa.float64()),
    ]
)

#: One row per optimizer step and parameter tensor.
LAYERS = pa.schema(
    [
        ("step", pa.int32()),
        ("cycle", pa.int32()),
        ("optimizer", pa.int16()),
        ("name", pa.string()),
        ("group", pa.int16()),
        ("lr", pa.float64()),
        ("weight_decay", pa.float64()),
        ("numel", pa.int64()),
        ("requires_grad", pa.bool_()),
        ("grad_is_none", pa.bool_()),
        ("grad_norm", pa.float32()),
        ("param_norm", pa.float32()),
        ("delta_norm", pa.float32()),
        ("outside_delta_norm", pa.float32()),
        ("feeds_logits", pa.bool_()),
    ]
)

#: Columns added after version 1, with the value older parts read as (head 0: one head per
#: forward; no non-finite rows counted; backward pass unknown; nothing masked).
ADDED_COLUMNS: dict[tuple[str, str], int | None] = {
    ("samples", "head"): 0, ("dists", "head"): 0, ("dists", "nonfinite_rows"): 0,
    ("samples", "grad_pass"): None, ("dists", "sampled"): None, ("samples", "fingerprint_inner"): None,
    ("samples", "mask"): 0,
}

TABLES: dict[str, pa.Schema] = {
    "samples": SAMPLES,
    "dists": DISTS,
    "steps": STEPS,
    "layers": LAYERS,
}
