"""Network + post-processing of one input shape as a CUDA graph, replayed for every later batch of that shape.

For a small network such as mobilenet0.25 at batch 1 the GPU mostly waits for
the CPU to launch ~150 kernels; a CUDA graph launches them all at once. The
preprocessing (uint8 -> float, mean, layout), the network and
``ops.detect_postprocess`` (which never synchronises with the host) are
captured together; a call copies the uint8 images into the graph's input,
replays it and copies the padded detections back.

``capture=False`` runs the same static-buffer step without a graph (what the
tests exercise on machines without a GPU).
"""
import torch


class StaticShapeDetector:
    def __init__(self, runner, shape, options, capture=True, warmup=3):
        self.runner = runner
        self.options = options
        self.height, self.width = shape[1], shape[2]
        self.static_input = torch.zeros(shape, dtype=torch.uint8, device=runner.device)
        self.graph = None
        if capture:
            # Warm-up on a side stream (cuDNN's algorithm choice, the allocator), as torch.cuda.graphs advises.
            stream = torch.cuda.Stream(device=runner.device)
            stream.wait_stream(torch.cuda.current_stream(runner.device))
            with torch.cuda.stream(stream), torch.inference_mode():
                for _ in range(warmup):
                    self._step()
            torch.cuda.current_stream(runner.device).wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), torch.inference_mode():
                self.static_output = self._step()

    def _step(self):
        from .runners import postprocess

        loc, conf, landms = self.runner.network(self.static_input)
        return postprocess(loc, conf, landms, self.height, self.width, self.options)

    def __call__(self, batch):
        """(detections numpy [B, K, 15], counts list) for uint8 [B, H, W, 3] images of this detector's shape."""
        if tuple(batch.shape) != tuple(self.static_input.shape):
            raise ValueError(f"this CUDA graph was captured for images of shape {list(self.static_input.shape)}, "
                             f"got {list(batch.shape)}")
        self.static_input.copy_(batch, non_blocking=True)
        if self.graph is None:
            with torch.inference_mode():
                detections, counts = self._step()
        else:
            self.graph.replay()
            detections, counts = self.static_output
        return detections.cpu().numpy(), counts.cpu().tolist()
