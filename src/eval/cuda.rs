//! The CUDA backend: the same forward pass as [`super::cpu`], with cuBLAS
//! GEMMs (bf16 inputs, f32 accumulation and output) and NVRTC-compiled kernels
//! for normalization, RoPE, attention (online softmax over key chunks), the
//! gated MLP and the log-softmax gather.
//!
//! cudarc loads every CUDA library at run time (`dynamic-loading`), so this
//! builds on machines without CUDA; but it panics when a library is missing,
//! so [`probe`] checks for the driver, NVRTC and cuBLAS and a device before
//! anything else here touches cudarc. Weights are uploaded once, tensor by
//! tensor and panel by panel from the memory-mapped files, as bf16; the
//! embedding stays on the host and only the batch's rows are uploaded.

use std::ffi::c_void;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig,
    PushKernelArg,
};

use super::model::{
    embed_tokens, layer_bias, layer_tensor, lm_head_name, Activation, ModelConfig, Unfused,
    WeightSource,
};
use super::{Backend, Batch};

/// Checks that the CUDA driver, NVRTC and cuBLAS libraries load and that a
/// device exists; the error says which part is missing.
pub fn probe() -> Result<()> {
    // SAFETY: these only try to dlopen the libraries.
    let libs = unsafe {
        [
            ("libcuda (driver)", cudarc::driver::sys::is_culib_present()),
            ("libnvrtc", cudarc::nvrtc::sys::is_culib_present()),
            ("libcublas", cudarc::cublas::sys::is_culib_present()),
        ]
    };
    let missing: Vec<&str> = libs.iter().filter(|(_, ok)| !ok).map(|(n, _)| *n).collect();
    if !missing.is_empty() {
        bail!("cannot load {}", missing.join(", "));
    }
    let count = std::panic::catch_unwind(CudaContext::device_count)
        .map_err(|_| anyhow!("the CUDA driver failed to initialize"))?
        .map_err(|e| anyhow!("the CUDA driver failed to initialize: {e:?}"))?;
    if count < 1 {
        bail!("the CUDA driver reports no device");
    }
    Ok(())
}

/// Threads per block for the row kernels.
const THREADS: u32 = 256;
/// Threads per (query, head) block of the attention kernel; each thread owns
/// head dimensions `tid` and `tid + ATTN_THREADS`.
const ATTN_THREADS: u32 = 128;
/// Rows of logits computed per output-head GEMM.
const LOGIT_ROWS: usize = 512;

/// The device kernels, compiled by NVRTC at start-up. bf16 values travel as
/// `unsigned short` and are converted by bit shifts (round to nearest even),
/// so no CUDA header is needed.
const KERNELS: &str = r#"
__device__ __forceinline__ float bf2f(unsigned short x) { return __uint_as_float(((unsigned int)x) << 16); }
__device__ __forceinline__ unsigned short f2bf(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
#define NEG_INF __int_as_float(0xff800000)

// Sum or max over the block; every thread gets the result. `red` holds 32 floats.
__device__ float block_reduce(float v, float* red, bool is_max) {
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_down_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, w) : v + w;
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < warps ? red[lane] : (is_max ? NEG_INF : 0.0f);
        for (int o = 16; o > 0; o >>= 1) {
            float w = __shfl_down_sync(0xffffffffu, v, o);
            v = is_max ? fmaxf(v, w) : v + w;
        }
        if (lane == 0) red[0] = v;
    }
    __syncthreads();
    return red[0];
}

// out[r] = bf16(w * x[rows[r]] / rms(x[rows[r]]))
extern "C" __global__ void rms_norm(const float* x, const unsigned int* rows, const float* w,
                                    unsigned short* out, int n, float eps) {
    __shared__ float red[32];
    const float* xr = x + (size_t)rows[blockIdx.x] * n;
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += xr[i] * xr[i];
    s = block_reduce(s, red, false);
    float inv = rsqrtf(s / n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        out[(size_t)blockIdx.x * n + i] = f2bf(w[i] * (xr[i] * inv));
}

// Rotate-half RoPE in place on every head of row blockIdx.x.
extern "C" __global__ void rope(float* x, const unsigned int* pos, const float* cos_t,
                                const float* sin_t, int width, int hd) {
    int half = hd / 2;
    float* row = x + (size_t)blockIdx.x * width;
    const float* c = cos_t + (size_t)pos[blockIdx.x] * half;
    const float* s = sin_t + (size_t)pos[blockIdx.x] * half;
    for (int t = threadIdx.x; t < width / 2; t += blockDim.x) {
        int h = t / half, i = t % half;
        float a = row[h * hd + i], b = row[h * hd + i + half];
        row[h * hd + i] = a * c[i] - b * s[i];
        row[h * hd + i + half] = b * c[i] + a * s[i];
    }
}

// One block per (query row, head). vis[3*i..] = {end of the first key range
// (which starts at 0), start and end of the second}, both already limited to
// keys at rows <= i.
extern "C" __global__ void attention(const float* q, const float* k, const float* v,
                                     const unsigned int* vis, unsigned short* out,
                                     int qd, int kvd, int hd, int group, float scale) {
    extern __shared__ float sh[];
    float* qs = sh;
    float* p = sh + hd;
    __shared__ float red[32];
    int i = blockIdx.x, h = blockIdx.y, g = h / group, tid = threadIdx.x, nt = blockDim.x;
    for (int d = tid; d < hd; d += nt) qs[d] = q[(size_t)i * qd + h * hd + d];
    __syncthreads();
    float m = NEG_INF, l = 0.0f, acc0 = 0.0f, acc1 = 0.0f;
    unsigned int starts[2] = {0u, vis[3 * i + 1]};
    unsigned int ends[2] = {vis[3 * i], vis[3 * i + 2]};
    for (int r = 0; r < 2; r++) {
        for (unsigned int k0 = starts[r]; k0 < ends[r]; k0 += nt) {
            unsigned int j = k0 + tid;
            float s = NEG_INF;
            if (j < ends[r]) {
                const float* kr = k + (size_t)j * kvd + g * hd;
                s = 0.0f;
                for (int d = 0; d < hd; d++) s += qs[d] * kr[d];
                s *= scale;
            }
            float new_m = fmaxf(m, block_reduce(s, red, true));
            float corr = __expf(m - new_m);
            float e = j < ends[r] ? __expf(s - new_m) : 0.0f;
            p[tid] = e;
            l = l * corr + block_reduce(e, red, false);
            acc0 *= corr;
            acc1 *= corr;
            int n = min((unsigned int)nt, ends[r] - k0);
            for (int t = 0; t < n; t++) {
                const float* vr = v + (size_t)(k0 + t) * kvd + g * hd;
                if (tid < hd) acc0 += p[t] * vr[tid];
                if (tid + nt < hd) acc1 += p[t] * vr[tid + nt];
            }
            m = new_m;
            __syncthreads();
        }
    }
    unsigned short* o = out + (size_t)i * qd + h * hd;
    if (tid < hd) o[tid] = f2bf(acc0 / l);
    if (tid + nt < hd) o[tid + nt] = f2bf(acc1 / l);
}

// out = bf16(silu(gate) * up)
extern "C" __global__ void silu_mul(const float* gate, const float* up, unsigned short* out, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) { float g = gate[i]; out[i] = f2bf(g / (1.0f + __expf(-g)) * up[i]); }
}

// h += d
extern "C" __global__ void add_in_place(float* h, const float* d, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) h[i] += d[i];
}

// lp[r] = log_softmax(logits[r])[target[r]]
extern "C" __global__ void log_softmax_gather(const float* logits, const unsigned int* target,
                                              float* lp, int vocab) {
    __shared__ float red[32];
    const float* row = logits + (size_t)blockIdx.x * vocab;
    float m = NEG_INF;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) m = fmaxf(m, row[i]);
    m = block_reduce(m, red, true);
    float s = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) s += __expf(row[i] - m);
    s = block_reduce(s, red, false);
    if (threadIdx.x == 0) lp[blockIdx.x] = row[target[blockIdx.x]] - m - __logf(s);
}
"#;

/// One layer's weights on the device.
struct Layer {
    input_norm: CudaSlice<f32>,
    post_norm: CudaSlice<f32>,
    q: DeviceMatrix,
    k: DeviceMatrix,
    v: DeviceMatrix,
    o: DeviceMatrix,
    gate: DeviceMatrix,
    up: DeviceMatrix,
    down: DeviceMatrix,
}

/// A bf16 `[rows, cols]` weight matrix on the device.
struct DeviceMatrix {
    data: CudaSlice<u16>,
    rows: usize,
    cols: usize,
}

struct Kernels {
    rms_norm: CudaFunction,
    rope: CudaFunction,
    attention: CudaFunction,
    silu_mul: CudaFunction,
    add_in_place: CudaFunction,
    log_softmax_gather: CudaFunction,
}

/// A Llama-family model resident on the GPU.
pub struct CudaModel<'w> {
    cfg: ModelConfig,
    weights: &'w dyn WeightSource,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: Kernels,
    layers: Vec<Layer>,
    final_norm: CudaSlice<f32>,
    lm_head: DeviceMatrix,
    device_name: String,
}

fn driver<T>(r: Result<T, cudarc::driver::DriverError>) -> Result<T> {
    r.map_err(|e| anyhow!("CUDA driver: {e:?}"))
}

impl<'w> CudaModel<'w> {
    /// Compiles the kernels and uploads the weights of a model that passed
    /// [`check_weights`](super::model::check_weights); call [`probe`] first.
    pub fn new(cfg: ModelConfig, weights: &'w dyn WeightSource) -> Result<CudaModel<'w>> {
        refuse_unshared(&cfg, weights)?;
        if cfg.head_dim > 2 * ATTN_THREADS as usize {
            bail!(
                "head dimension {} is above the CUDA attention kernel's limit of {}",
                cfg.head_dim,
                2 * ATTN_THREADS
            );
        }
        let ctx = driver(CudaContext::new(0))?;
        let device_name = driver(ctx.name())?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| anyhow!("cuBLAS: {e:?}"))?;
        let ptx = cudarc::nvrtc::compile_ptx(KERNELS).map_err(|e| anyhow!("NVRTC: {e:?}"))?;
        let module = driver(ctx.load_module(ptx))?;
        let f = |name: &str| driver(module.load_function(name));
        let kernels = Kernels {
            rms_norm: f("rms_norm")?,
            rope: f("rope")?,
            attention: f("attention")?,
            silu_mul: f("silu_mul")?,
            add_in_place: f("add_in_place")?,
            log_softmax_gather: f("log_softmax_gather")?,
        };
        let vector = |name: &str| -> Result<CudaSlice<f32>> {
            let (len, _) = weights.shape(name).context(name.to_owned())?;
            let mut host = vec![0.0; len];
            weights.read_rows(name, 0..len, &mut host)?;
            driver(stream.clone_htod(&host))
        };
        let unfused = Unfused::new(&cfg, weights);
        let matrix = |name: &str| upload_matrix(&stream, &unfused, name);
        let layers = (0..cfg.layers)
            .map(|l| {
                Ok(Layer {
                    input_norm: vector(&layer_tensor(l, "input_layernorm"))?,
                    post_norm: vector(&layer_tensor(l, "post_attention_layernorm"))?,
                    q: matrix(&layer_tensor(l, "self_attn.q_proj"))?,
                    k: matrix(&layer_tensor(l, "self_attn.k_proj"))?,
                    v: matrix(&layer_tensor(l, "self_attn.v_proj"))?,
                    o: matrix(&layer_tensor(l, "self_attn.o_proj"))?,
                    gate: matrix(&layer_tensor(l, "mlp.gate_proj"))?,
                    up: matrix(&layer_tensor(l, "mlp.up_proj"))?,
                    down: matrix(&layer_tensor(l, "mlp.down_proj"))?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(CudaModel {
            final_norm: vector("model.norm.weight")?,
            lm_head: matrix(lm_head_name(&cfg))?,
            cfg,
            weights,
            stream,
            blas,
            kernels,
            layers,
            device_name,
        })
    }

    /// `y[m, n] = x[m, k] · Wᵀ` with bf16 inputs and f32 accumulation/output.
    fn gemm(&self, x: &CudaSlice<u16>, m: usize, w: &DeviceMatrix) -> Result<CudaSlice<f32>> {
        let mut y = driver(self.stream.alloc_zeros::<f32>(m * w.rows))?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        {
            let (wp, _w) = w.data.device_ptr(&self.stream);
            let (xp, _x) = x.device_ptr(&self.stream);
            let (yp, _y) = y.device_ptr_mut(&self.stream);
            // Row-major Y = X·Wᵀ is column-major Yᵀ = W·Xᵀ: A = W (transposed,
            // lda = k), B = X (lda = k), C = Y (ldc = n).
            // SAFETY: the pointers are live device allocations of the sizes
            // the dimensions describe.
            unsafe {
                cudarc::cublas::result::gemm_ex(
                    *self.blas.handle(),
                    cublasOperation_t::CUBLAS_OP_T,
                    cublasOperation_t::CUBLAS_OP_N,
                    w.rows as i32,
                    m as i32,
                    w.cols as i32,
                    &alpha as *const f32 as *const c_void,
                    wp as *const c_void,
                    cudaDataType::CUDA_R_16BF,
                    w.cols as i32,
                    xp as *const c_void,
                    cudaDataType::CUDA_R_16BF,
                    w.cols as i32,
                    &beta as *const f32 as *const c_void,
                    yp as *mut c_void,
                    cudaDataType::CUDA_R_32F,
                    w.rows as i32,
                    cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(|e| anyhow!("cuBLAS GEMM: {e:?}"))?;
        }
        Ok(y)
    }

    fn rms_norm(
        &self,
        x: &CudaSlice<f32>,
        rows: &CudaSlice<u32>,
        n_rows: usize,
        weight: &CudaSlice<f32>,
    ) -> Result<CudaSlice<u16>> {
        let n = self.cfg.hidden;
        let mut out = driver(self.stream.alloc_zeros::<u16>(n_rows * n))?;
        let (n_i, eps) = (n as i32, self.cfg.rms_eps);
        let mut b = self.stream.launch_builder(&self.kernels.rms_norm);
        b.arg(x)
            .arg(rows)
            .arg(weight)
            .arg(&mut out)
            .arg(&n_i)
            .arg(&eps);
        // SAFETY: argument types and sizes match the kernel signature.
        driver(unsafe { b.launch(rows_config(n_rows)) })?;
        Ok(out)
    }

    fn add_in_place(&self, h: &mut CudaSlice<f32>, d: &CudaSlice<f32>) -> Result<()> {
        let n = h.len();
        let cfg = elementwise_config(n);
        let mut b = self.stream.launch_builder(&self.kernels.add_in_place);
        b.arg(h).arg(d).arg(&n);
        // SAFETY: as above.
        driver(unsafe { b.launch(cfg) })?;
        Ok(())
    }

    fn rope(
        &self,
        x: &mut CudaSlice<f32>,
        rows: usize,
        width: usize,
        tables: &RopeTables,
    ) -> Result<()> {
        let (w, hd) = (width as i32, self.cfg.head_dim as i32);
        let mut b = self.stream.launch_builder(&self.kernels.rope);
        b.arg(x)
            .arg(&tables.positions)
            .arg(&tables.cos)
            .arg(&tables.sin)
            .arg(&w)
            .arg(&hd);
        // SAFETY: as above.
        driver(unsafe { b.launch(rows_config(rows)) })?;
        Ok(())
    }

    fn forward_hidden(&self, batch: &Batch) -> Result<CudaSlice<f32>> {
        let cfg = &self.cfg;
        if let Some(w) = (0..cfg.layers).find_map(|l| cfg.window(l)) {
            if batch.max_position() + 1 > w {
                bail!(
                    "`{}`: windows longer than the sliding window ({w}) are not implemented \
                     by the CUDA kernels; run on the CPU (`device: cpu`)",
                    cfg.architecture
                );
            }
        }
        let rows = batch.rows();
        let host = embed_tokens(self.weights, cfg, batch)?;
        let mut h = driver(self.stream.clone_htod(&host))?;
        drop(host);
        let all_rows: Vec<u32> = (0..rows as u32).collect();
        let all_rows = driver(self.stream.clone_htod(&all_rows))?;
        let tables = RopeTables::new(&self.stream, cfg, batch)?;
        let visibility = driver(self.stream.clone_htod(&visibility(batch)))?;
        for layer in &self.layers {
            let xn = self.rms_norm(&h, &all_rows, rows, &layer.input_norm)?;
            let mut q = self.gemm(&xn, rows, &layer.q)?;
            let mut k = self.gemm(&xn, rows, &layer.k)?;
            let v = self.gemm(&xn, rows, &layer.v)?;
            self.rope(&mut q, rows, cfg.q_dim(), &tables)?;
            self.rope(&mut k, rows, cfg.kv_dim(), &tables)?;
            let mut attn = driver(self.stream.alloc_zeros::<u16>(rows * cfg.q_dim()))?;
            let (qd, kvd, hd) = (cfg.q_dim() as i32, cfg.kv_dim() as i32, cfg.head_dim as i32);
            let group = (cfg.heads / cfg.kv_heads) as i32;
            let scale = 1.0 / (cfg.head_dim as f32).sqrt();
            let launch = LaunchConfig {
                grid_dim: (rows as u32, cfg.heads as u32, 1),
                block_dim: (ATTN_THREADS, 1, 1),
                shared_mem_bytes: ((cfg.head_dim + ATTN_THREADS as usize) * 4) as u32,
            };
            let mut b = self.stream.launch_builder(&self.kernels.attention);
            b.arg(&q).arg(&k).arg(&v).arg(&visibility).arg(&mut attn);
            b.arg(&qd).arg(&kvd).arg(&hd).arg(&group).arg(&scale);
            // SAFETY: as above; shared memory holds the query and one score per thread.
            driver(unsafe { b.launch(launch) })?;
            let o = self.gemm(&attn, rows, &layer.o)?;
            self.add_in_place(&mut h, &o)?;
            let xn = self.rms_norm(&h, &all_rows, rows, &layer.post_norm)?;
            let gate = self.gemm(&xn, rows, &layer.gate)?;
            let up = self.gemm(&xn, rows, &layer.up)?;
            let n = gate.len();
            let mut act = driver(self.stream.alloc_zeros::<u16>(n))?;
            let launch = elementwise_config(n);
            let mut b = self.stream.launch_builder(&self.kernels.silu_mul);
            b.arg(&gate).arg(&up).arg(&mut act).arg(&n);
            // SAFETY: as above.
            driver(unsafe { b.launch(launch) })?;
            let down = self.gemm(&act, rows, &layer.down)?;
            self.add_in_place(&mut h, &down)?;
        }
        Ok(h)
    }
}

/// Refuses models whose layers need more than the Llama kernels: per-head
/// norms, Gemma's norms, embedding scale and soft-capping, other
/// activations, partial rotary, local rotary bases, biases. Phi-3's fused
/// projections are shared (uploaded through [`Unfused`]).
fn refuse_unshared(cfg: &ModelConfig, weights: &dyn WeightSource) -> Result<()> {
    let features = [
        ("per-head q/k norms", cfg.qk_norm),
        ("Gemma norms", cfg.sandwich_norms || cfg.norm_offset != 0.0),
        ("scaled embeddings", cfg.embed_scale.is_some()),
        (
            "logit soft-capping",
            cfg.attn_softcap.is_some() || cfg.final_softcap.is_some(),
        ),
        ("a GELU MLP", cfg.activation != Activation::Silu),
        ("partial rotary embeddings", cfg.rotary_dim != cfg.head_dim),
        ("a local rotary base", cfg.rope_local_theta.is_some()),
        (
            "a query scale other than 1/√head_dim",
            cfg.attn_scale != 1.0 / (cfg.head_dim as f32).sqrt(),
        ),
        (
            "linear biases",
            (0..cfg.layers).any(|l| {
                ["q_proj", "k_proj", "v_proj", "o_proj"].iter().any(|p| {
                    weights
                        .shape(&layer_bias(l, &format!("self_attn.{p}")))
                        .is_some()
                }) || ["gate_proj", "up_proj", "down_proj"]
                    .iter()
                    .any(|p| weights.shape(&layer_bias(l, &format!("mlp.{p}"))).is_some())
            }),
        ),
    ];
    let needs: Vec<&str> = features
        .iter()
        .filter(|(_, used)| *used)
        .map(|(what, _)| *what)
        .collect();
    if !needs.is_empty() {
        bail!(
            "the CUDA backend runs Llama-family layers only; `{}` needs {}; run on the CPU (`device: cpu`)",
            cfg.architecture,
            needs.join(", ")
        );
    }
    Ok(())
}

/// Per row: end of the visible prefix range (from 0), then start and end of
/// the row's own branch range; all limited to keys at rows ≤ the row.
fn visibility(batch: &Batch) -> Vec<u32> {
    let mut vis = vec![0u32; 3 * batch.rows()];
    for block in batch.query_blocks(batch.rows().max(1)) {
        for i in block.rows.clone() {
            let first = &block.keys[0];
            vis[3 * i] = first.end.min(i + 1) as u32;
            if let Some(second) = block.keys.get(1) {
                vis[3 * i + 1] = second.start as u32;
                vis[3 * i + 2] = second.end.min(i + 1) as u32;
            }
        }
    }
    vis
}

fn elementwise_config(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(THREADS as usize) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn rows_config(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Uploads `name` as bf16, a panel of rows at a time.
fn upload_matrix(
    stream: &Arc<CudaStream>,
    weights: &dyn WeightSource,
    name: &str,
) -> Result<DeviceMatrix> {
    let (rows, cols) = weights.shape(name).context(name.to_owned())?;
    let mut data = driver(stream.alloc_zeros::<u16>(rows * cols))?;
    let panel = (16 << 20) / cols.max(1);
    let mut f32_rows = vec![0.0f32; panel.min(rows) * cols];
    for r0 in (0..rows).step_by(panel.max(1)) {
        let r1 = (r0 + panel).min(rows);
        let host = &mut f32_rows[..(r1 - r0) * cols];
        weights.read_rows(name, r0..r1, host)?;
        let bits: Vec<u16> = host
            .iter()
            .map(|v| half::bf16::from_f32(*v).to_bits())
            .collect();
        driver(stream.memcpy_htod(&bits, &mut data.slice_mut(r0 * cols..r1 * cols)))?;
    }
    Ok(DeviceMatrix { data, rows, cols })
}

/// Positions and cos/sin tables of one batch on the device.
struct RopeTables {
    positions: CudaSlice<u32>,
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
}

impl RopeTables {
    fn new(stream: &Arc<CudaStream>, cfg: &ModelConfig, batch: &Batch) -> Result<RopeTables> {
        let seq_len = batch.max_position() + 1;
        let (freqs, factor) = cfg.rope_frequencies(seq_len);
        let mut cos = Vec::with_capacity(seq_len * freqs.len());
        let mut sin = Vec::with_capacity(seq_len * freqs.len());
        for p in 0..seq_len {
            for f in &freqs {
                let a = p as f64 * f;
                cos.push((a.cos() * factor) as f32);
                sin.push((a.sin() * factor) as f32);
            }
        }
        let positions: Vec<u32> = batch.positions().iter().map(|&p| p as u32).collect();
        Ok(RopeTables {
            positions: driver(stream.clone_htod(&positions))?,
            cos: driver(stream.clone_htod(&cos))?,
            sin: driver(stream.clone_htod(&sin))?,
        })
    }
}

impl Backend for CudaModel<'_> {
    fn kind(&self) -> &'static str {
        "cuda"
    }

    fn device(&self) -> String {
        format!("cuda, {}", self.device_name)
    }

    fn log_probs(&self, batch: &Batch, targets: &[(usize, u32)]) -> Result<Vec<f64>> {
        let cfg = &self.cfg;
        let h = self.forward_hidden(batch)?;
        let mut out = Vec::with_capacity(targets.len());
        for part in targets.chunks(LOGIT_ROWS) {
            let rows: Vec<u32> = part.iter().map(|&(r, _)| r as u32).collect();
            let tokens: Vec<u32> = part.iter().map(|&(_, t)| t).collect();
            if let Some(t) = tokens.iter().find(|&&t| t as usize >= cfg.vocab) {
                bail!(
                    "target token id {t} is outside the vocabulary of {}",
                    cfg.vocab
                );
            }
            let rows_d = driver(self.stream.clone_htod(&rows))?;
            let tokens_d = driver(self.stream.clone_htod(&tokens))?;
            let xn = self.rms_norm(&h, &rows_d, part.len(), &self.final_norm)?;
            let logits = self.gemm(&xn, part.len(), &self.lm_head)?;
            let mut lp = driver(self.stream.alloc_zeros::<f32>(part.len()))?;
            let vocab = cfg.vocab as i32;
            let mut b = self.stream.launch_builder(&self.kernels.log_softmax_gather);
            b.arg(&logits).arg(&tokens_d).arg(&mut lp).arg(&vocab);
            // SAFETY: as above.
            driver(unsafe { b.launch(rows_config(part.len())) })?;
            out.extend(
                driver(self.stream.clone_dtoh(&lp))?
                    .into_iter()
                    .map(f64::from),
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_limits_rows_to_their_prefix_and_branch() {
        let batch = Batch::with_branches(vec![5, 6, 7], vec![vec![1, 2], vec![3]]);
        assert_eq!(
            visibility(&batch),
            vec![1, 0, 0, 2, 0, 0, 3, 0, 0, 3, 3, 4, 3, 3, 5, 3, 5, 6]
        );
    }
}
