"""Label values shared by data and models."""

# Pixels that count neither as foreground nor background (PASCAL VOC's object
# boundaries, COCO crowds, padding): no loss, no score.
IGNORE_LABEL = 255
