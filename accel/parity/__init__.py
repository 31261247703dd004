"""`accel parity FAMILY DIR`: check accel against fixture folders made by the official code."""
