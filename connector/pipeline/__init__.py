"""One pipeline: the loop joining the stages, offsets released only after delivery, rebalances."""
