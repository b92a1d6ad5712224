// Embed one ORF shard with DNABERT-S and ESM-2 (the GPU step). Wraps `virnucpro embed`.
// The checkpoint directory lives outside the work directory, so a retried or resumed task picks
// the shard up where the killed one stopped (the CLI keys it by shard content, models, precision).
process VIRNUCPRO_EMBED {
    tag "${meta.id}:${shard.baseName}"
    label 'process_gpu'

    input:
    tuple val(meta), path(shard)
    path models
    val checkpoint_dir

    output:
    tuple val(meta), path("${shard.baseName}.h5"), emit: embeddings
    tuple val("${task.process}"), val('virnucpro'), eval('virnucpro --version | sed "s/^virnucpro //"'), emit: versions_virnucpro, topic: versions
    tuple val("${task.process}"), val('torch'), eval('python -c "import torch; print(torch.__version__)"'), emit: versions_torch, topic: versions

    script:
    def args = task.ext.args ?: ''
    def checkpoint = checkpoint_dir ? "--checkpoint-dir ${checkpoint_dir}" : ''
    """
    virnucpro embed \\
        ${shard} \\
        --models ${models} \\
        --out ${shard.baseName}.h5 \\
        --threads ${task.cpus} \\
        ${checkpoint} \\
        ${args}
    """

    stub:
    """
    touch ${shard.baseName}.h5
    """
}
