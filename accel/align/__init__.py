"""Alignment of AR generators so that they sample well without guidance (CCA, ``cca.py``)."""
from accel.align.cca import (cca_loss, contrastive_conditions, llamagen_sequence_logp, reward_stats,
                             var_scale_ramp, var_sequence_logp)

__all__ = ["cca_loss", "contrastive_conditions", "llamagen_sequence_logp", "var_scale_ramp", "var_sequence_logp",
           "reward_stats"]
