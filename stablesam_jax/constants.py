"""Values shared by the model, the prompt samplers and the data pipeline."""

# Point labels follow the official SAM: 1 foreground, 0 background, -1 "not a point" (the padding
# token SAM appends when there is no box). PAD_LABEL marks an empty slot in a fixed-size prompt
# batch: the decoder masks such tokens out of attention, so they change nothing.
POSITIVE_LABEL = 1
NEGATIVE_LABEL = 0
NOT_A_POINT_LABEL = -1
PAD_LABEL = -2

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
