// Embed one ORF shard with DNABERT-S and ESM-2 (the GPU step). Wraps `virnucpro embed`.
// The models folder is checked against the encoders its manifest recorded when the run started
// (bin/pinned_models.py, before and after embedding): a folder changed during the run fails the
// task (exit 5) rather than mixing two model sets or caching embeddings under the start's key.
// The checkpoint directory lives outside the work directory, so a retried or resumed task picks
// the shard up where the killed one stopped (the CLI keys it by shard content, models, precision,
// inside a folder per sample).
// On a GPU, `gpu_slot.py` (bin/) makes concurrent tasks on one machine use different GPUs, and the
// kernels torch.compile builds are cached beside the checkpoints: tasks started after the first
// ones load them (a few seconds of tracing remain) instead of compiling again. gpu_slot.py runs in
// virnucpro's own Python (bin/virnucpro_python): the PATH may have no python3, or an older one.
// A stop signal (a scheduler's time-limit warning, preemption, Nextflow killing the task) reaches
// `virnucpro embed` from Nextflow's task wrapper, which then exits at once: the embed process holds
// a lock on .embed.running for its whole life, and afterScript (run by the wrapper, on the host,
// after the task) waits for it, so the checkpoint is saved before the job ends. On a file system
// without flock (Lustre mounted noflock: ENOSYS) the task warns and embeds without that wait: a stop
// signal may then end the job before the checkpoint is saved (the retry resumes from the last
// periodic one), which beats failing every task.
process VIRNUCPRO_EMBED {
    tag "${meta.id}:${shard.baseName}"
    label 'process_gpu'
    // The models folder is keyed by models_key, not by the folder entry's time, which changes when
    // virnucpro writes its checksum cache or fp16 copy there; the shard's path names the PREPARE task
    cache 'lenient'
    afterScript 'flock --wait 300 .embed.running true || true'

    input:
    tuple val(meta), path(shard)
    // models_key: its files' names, sizes and times, and models_pins (modelsCacheKey); models_pins: JSON
    // of the encoders' manifest entries when the run started (encoderPins)
    tuple path(models), val(models_key), val(models_pins)
    val checkpoint_dir

    output:
    tuple val(meta), path("${shard.baseName}.h5"), emit: embeddings
    tuple val("${task.process}"), val('virnucpro'), eval('virnucpro --version | sed "s/^virnucpro //"'), emit: versions_virnucpro
    tuple val("${task.process}"), val('torch'), eval('torch_version.sh'), emit: versions_torch

    script:
    def args = task.ext.args ?: ''
    def device = task.ext.device ?: 'auto'
    // one folder per sample: two samples with byte-identical shards have the same checkpoint key,
    // and their tasks may run at the same time
    // the checkpoint folder is a user's path (spaces, quotes): quoted for the shell
    def checkpoint = checkpoint_dir ? '--checkpoint-dir ' + shellQuoted("${checkpoint_dir}/samples/${meta.id}") : ''
    def compile_cache = checkpoint_dir ? '--compile-cache ' + shellQuoted("${checkpoint_dir}/compile-cache") : ''
    def slots = shellQuoted("${checkpoint_dir ?: '.'}/.gpu-slots")
    // the models folder is staged under the user's name for it: `./` keeps a name like `~m` from
    // being taken for a home directory (by the shell for an existing user, else by virnucpro). Its
    // plain name, quoted here: `${models}` is already escaped by Nextflow (`mo\ dels`), and quoting
    // that kept the backslash
    def models_path = shellQuoted("./${models.name}")
    def pins = shellQuoted(models_pins)
    """
    require_virnucpro.sh ${workflow.manifest.version}
    virnucpro_python pinned_models.py --pins ${pins} --models ${models_path}
    exec 9> .embed.running
    flock 9 || echo "virnucpro: warning: cannot lock .embed.running (no flock on this file system?): a stop signal may end the task before embed saves its checkpoint" >&2
    virnucpro_python gpu_slot.py --lock-dir ${slots} --device ${device} -- \\
    virnucpro embed \\
        ${shard} \\
        --models ${models_path} \\
        --out ${shard.baseName}.h5 \\
        --device ${device} \\
        --threads ${task.cpus} \\
        ${checkpoint} \\
        ${compile_cache} \\
        ${args}
    virnucpro_python pinned_models.py --pins ${pins} --embedding ${shard.baseName}.h5
    """

    stub:
    """
    printf 'virnucpro embedding shard seal 1\\nstub\\n' > ${shard.baseName}.h5
    """
}

// One word for the shell, whatever the path holds
def shellQuoted(path) {
    return "'" + path.toString().replace("'", "'\\''") + "'"
}
