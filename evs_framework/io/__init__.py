"""Video files and latents: reading and writing clips, frames to latents and back."""
