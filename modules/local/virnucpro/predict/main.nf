// Classify every ORF of one sample from all its embedding shards and write the result tables.
// Wraps `virnucpro predict`; the classifier comes from the models directory unless one is given
// (pass [] for none).
process VIRNUCPRO_PREDICT {
    tag "${meta.id}"
    label 'process_low'

    input:
    tuple val(meta), path(prepared, stageAs: 'prepared'), path(embeddings, stageAs: 'embeddings/*')
    path models
    path classifier

    output:
    tuple val(meta), path("${prefix}/prediction_results.txt"), emit: predictions
    tuple val(meta), path("${prefix}/prediction_results_highestscore.csv"), emit: highestscore
    tuple val(meta), path("${prefix}/chunks.tsv"), emit: chunks
    tuple val(meta), path("${prefix}/sequences.tsv"), emit: sequences
    tuple val(meta), path("${prefix}/report.html"), emit: report
    tuple val(meta), path("${prefix}/run_info.json"), emit: run_info
    tuple val("${task.process}"), val('virnucpro'), eval('virnucpro --version | sed "s/^virnucpro //"'), emit: versions_virnucpro, topic: versions

    script:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    def classifier_arg = classifier ? "--classifier ${classifier}" : ''
    """
    virnucpro predict \\
        --prepared ${prepared} \\
        --models ${models} \\
        --embeddings ${embeddings} \\
        --outdir ${prefix} \\
        ${classifier_arg} \\
        ${args}
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    mkdir -p ${prefix}
    printf 'Sequence_ID\\tPrediction\\tscore1\\tscore2\\n' > ${prefix}/prediction_results.txt
    printf 'Modified_ID\\tIs_Virus\\n' > ${prefix}/prediction_results_highestscore.csv
    printf 'chunk_id\\tsequence_id\\tstart\\tlength\\tn_orfs\\tbest_orf\\tmax_score_virus\\tcall\\n' > ${prefix}/chunks.tsv
    printf 'sequence_id\\tlength\\tn_chunks\\tn_chunks_virus\\tn_chunks_no_orf\\tfraction_virus\\tmax_score_virus\\tmean_score_virus\\tcall\\n' > ${prefix}/sequences.tsv
    echo '<!doctype html><title>stub</title>' > ${prefix}/report.html
    echo '{"stub": true}' > ${prefix}/run_info.json
    """
}
