// Pixels for the base (inputs/image.py's `prepare` in JavaScript): any image source
// -> uint8 RGB [height, width, 3], resized with a Lanczos filter so that it covers the
// input and center-cropped, as the manifest's input says (docs/bundle-format.md).
//
// The resampling is Pillow's, step for step: the same float crop box, the same
// Lanczos-3 kernel stretched by the scale, the same 22-bit fixed-point coefficients,
// horizontal pass then vertical pass, each rounded to 8 bits. One difference: Pillow's
// resize(reducing_gap=3) first shrinks an image more than 6x larger than the input by
// an integer box filter; this resizes such images with Lanczos directly (Pillow calls
// the two indistinguishable; camera frames are never that large).
// Alpha is composited on white, as Python does. Decoding (JPEG, EXIF orientation) is
// the browser's: createImageBitmap(blob, {imageOrientation: "from-image"}).

import { EdgetuneError } from "./manifest.js";

const PRECISION_BITS = 32 - 8 - 2;
const SUPPORT = 3.0;

const sinc = (x) => {
  if (x === 0) return 1.0;
  const px = x * Math.PI;
  return Math.sin(px) / px;
};
const lanczos = (x) => (x > -SUPPORT && x < SUPPORT ? sinc(x) * sinc(x / SUPPORT) : 0.0);

/** Pillow's precompute_coeffs + normalize_coeffs_8bpc: per output pixel, start, count, int weights. */
function coefficients(inSize, in0, in1, outSize) {
  const scale = (in1 - in0) / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = SUPPORT * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      const w = lanczos((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      const w = ww !== 0.0 ? k[x] / ww : k[x];
      kk[xx * ksize + x] = Math.trunc(w < 0 ? w * (1 << PRECISION_BITS) - 0.5 : w * (1 << PRECISION_BITS) + 0.5);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { bounds, kk, ksize };
}

const clip8 = (v) => {
  const s = v >> PRECISION_BITS; // arithmetic shift, as Pillow's int arithmetic
  return s < 0 ? 0 : s > 255 ? 255 : s;
};

/** Resample RGB rows [h, w, 3] horizontally to `outW` over the box [x0, x1). */
function horizontal(src, w, h, outW, x0, x1) {
  const { bounds, kk, ksize } = coefficients(w, x0, x1, outW);
  const out = new Uint8Array(h * outW * 3);
  const half = 1 << (PRECISION_BITS - 1);
  for (let y = 0; y < h; y++) {
    for (let xx = 0; xx < outW; xx++) {
      const xmin = bounds[xx * 2];
      const xmax = bounds[xx * 2 + 1];
      let r = half;
      let g = half;
      let b = half;
      for (let x = 0; x < xmax; x++) {
        const c = kk[xx * ksize + x];
        const at = (y * w + x + xmin) * 3;
        r += src[at] * c;
        g += src[at + 1] * c;
        b += src[at + 2] * c;
      }
      const o = (y * outW + xx) * 3;
      out[o] = clip8(r);
      out[o + 1] = clip8(g);
      out[o + 2] = clip8(b);
    }
  }
  return out;
}

/** Resample RGB [h, w, 3] vertically to `outH` over the box [y0, y1). */
function vertical(src, w, h, outH, y0, y1) {
  const { bounds, kk, ksize } = coefficients(h, y0, y1, outH);
  const out = new Uint8Array(outH * w * 3);
  const half = 1 << (PRECISION_BITS - 1);
  for (let yy = 0; yy < outH; yy++) {
    const ymin = bounds[yy * 2];
    const ymax = bounds[yy * 2 + 1];
    for (let x = 0; x < w; x++) {
      let r = half;
      let g = half;
      let b = half;
      for (let y = 0; y < ymax; y++) {
        const c = kk[yy * ksize + y];
        const at = ((y + ymin) * w + x) * 3;
        r += src[at] * c;
        g += src[at + 1] * c;
        b += src[at + 2] * c;
      }
      const o = (yy * w + x) * 3;
      out[o] = clip8(r);
      out[o + 1] = clip8(g);
      out[o + 2] = clip8(b);
    }
  }
  return out;
}

/** RGBA pixels (ImageData's) -> RGB, alpha composited on white. */
export function rgbOf(rgba, w, h) {
  const out = new Uint8Array(w * h * 3);
  for (let i = 0, j = 0; i < w * h * 4; i += 4, j += 3) {
    const a = rgba[i + 3];
    if (a === 255) {
      out[j] = rgba[i];
      out[j + 1] = rgba[i + 1];
      out[j + 2] = rgba[i + 2];
    } else {
      for (let c = 0; c < 3; c++) out[j + c] = Math.round((rgba[i + c] * a + 255 * (255 - a)) / 255);
    }
  }
  return out;
}

/** Fit RGB [h, w, 3] to width x height: Lanczos cover, center crop (image.prepare). */
export function fitPixels(rgb, w, h, width, height) {
  let boxW;
  let boxH;
  if (w * height >= h * width) {
    boxW = Math.min(w, (h * width) / height);
    boxH = h;
  } else {
    boxW = w;
    boxH = Math.min(h, (w * height) / width);
  }
  const left = Math.max(0, (w - boxW) / 2);
  const top = Math.max(0, (h - boxH) / 2);
  // Pillow (13): both passes read the whole rows/columns; it runs first the pass whose
  // intermediate image is smaller (vertical if w * height < width * h, else horizontal).
  const needH = !(width === w && left === 0 && boxW === w);
  const needV = !(height === h && top === 0 && boxH === h);
  let out = rgb;
  if (needH && needV && w * height < width * h) {
    out = vertical(out, w, h, height, top, top + boxH);
    return horizontal(out, w, height, width, left, left + boxW);
  }
  let cw = w;
  if (needH) {
    out = horizontal(out, w, h, width, left, left + boxW);
    cw = width;
  }
  if (needV) out = vertical(out, cw, h, height, top, top + boxH);
  return out;
}

const sizeOf = (source) => {
  if (typeof HTMLVideoElement !== "undefined" && source instanceof HTMLVideoElement) {
    return [source.videoWidth, source.videoHeight];
  }
  return [source.width, source.height];
};

/** Any image source as RGBA ImageData at its own size (and the drawable, for thumbnails). */
export async function imageDataOf(source) {
  if (typeof ImageData !== "undefined" && source instanceof ImageData) return source;
  let drawable = source;
  if (typeof Blob !== "undefined" && source instanceof Blob) {
    try {
      drawable = await createImageBitmap(source, { imageOrientation: "from-image" });
    } catch (error) {
      throw new EdgetuneError(`the file is not an image this browser can decode (${error.message})`, "bad_input");
    }
  }
  const [w, h] = sizeOf(drawable);
  if (!(w > 0 && h > 0)) {
    throw new EdgetuneError("the image source has no pixels yet (a video that has not started?)", "bad_input");
  }
  const canvas = new OffscreenCanvas(w, h);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(drawable, 0, 0);
  if (drawable !== source && drawable.close) drawable.close();
  return ctx.getImageData(0, 0, w, h);
}

/** The base's input for one source: uint8 [height, width, 3]. */
export async function preparePixels(source, width, height, minSize = 16) {
  const data = await imageDataOf(source);
  if (Math.min(data.width, data.height) < minSize) {
    throw new EdgetuneError(`the image is ${data.width}x${data.height}; at least ${minSize} pixels `
      + "on each side are needed", "bad_input");
  }
  return fitPixels(rgbOf(data.data, data.width, data.height), data.width, data.height, width, height);
}

/** A small JPEG of prepared RGB pixels [h, w, 3], for the page's sample grid. */
export async function thumbnail(rgb, w, h, side = 64) {
  const small = fitPixels(rgb, w, h, side, side);
  const rgba = new Uint8ClampedArray(side * side * 4);
  for (let i = 0, j = 0; j < small.length; i += 4, j += 3) {
    rgba[i] = small[j];
    rgba[i + 1] = small[j + 1];
    rgba[i + 2] = small[j + 2];
    rgba[i + 3] = 255;
  }
  const image = new ImageData(rgba, side, side);
  if (typeof document === "undefined") {
    const canvas = new OffscreenCanvas(side, side);
    canvas.getContext("2d").putImageData(image, 0, 0);
    return canvas.convertToBlob({ type: "image/jpeg", quality: 0.8 });
  }
  // toDataURL encodes at once; convertToBlob and toBlob may wait for the browser to be
  // idle, which it seldom is while a record button is held down (up to a second here).
  const canvas = document.createElement("canvas");
  canvas.width = side;
  canvas.height = side;
  canvas.getContext("2d").putImageData(image, 0, 0);
  const binary = atob(canvas.toDataURL("image/jpeg", 0.8).split(",")[1]);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return new Blob([bytes], { type: "image/jpeg" });
}
