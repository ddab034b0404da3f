"""The peer: transformers' LlavaForConditionalGeneration at NVILA's sizes, trained with the stock Trainer."""
