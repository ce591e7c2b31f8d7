"""The tiny real-data demo (tide-demo): its phases, and the LLaDA2 teacher pretraining it uses."""
