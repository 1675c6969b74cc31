// edgetune: the microphone's samples, posted to the page in chunks (AudioWorklet).
"use strict";

class EdgetunePcm extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const chunk = (options && options.processorOptions && options.processorOptions.chunk) || 1600;
    this.size = chunk;
    this.buffer = new Float32Array(chunk);
    this.filled = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (input && input.length) {
      const channels = input.length;
      const frames = input[0].length;
      for (let i = 0; i < frames; i++) {
        let sum = 0;
        for (let c = 0; c < channels; c++) sum += input[c][i];
        this.buffer[this.filled++] = sum / channels;
        if (this.filled === this.size) {
          this.port.postMessage(this.buffer, [this.buffer.buffer]);  // detaches this.buffer
          this.buffer = new Float32Array(this.size);
          this.filled = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor("edgetune-pcm", EdgetunePcm);
