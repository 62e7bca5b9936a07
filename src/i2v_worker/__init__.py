"""i2v-worker: Wan2.2 image-to-video on RunPod serverless with an on-demand, verified model store."""

__version__ = "0.1.0"
