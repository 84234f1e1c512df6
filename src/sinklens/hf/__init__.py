"""What sinklens adds to transformers, below every other room: the rows route's attention function
(`rows_attention`, registered in transformers' `AttentionInterface` on request) and image-only
processors for families whose full processor insists on torchvision (`processors`)."""
