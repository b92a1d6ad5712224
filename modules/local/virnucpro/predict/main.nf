// Classify every ORF of one sample from all its embedding shards and write the result tables, and
// the sample's row of the run summary, its counts reconciled (bin/virnucpro_summary.py row, run by
// virnucpro's own Python through bin/virnucpro_python: the PATH may have no python3, or an older one).
// Wraps `virnucpro predict`. It gets only the classifier, never the whole models directory (ESM-2 3B
// would be copied to every task on cloud executors): `classifier_files` is the classifier with the
// models manifest that pins its checksum (staged as _input/models/), or a classifier file given by the
// user (then `user_classifier` is true), first, with the manifest.json of its folder if it has one. Inputs are staged under _input/, a name no sample can have,
// so the sample's results folder (named after it) never meets them. The embedding shards are given as
// their folder: a sample's tens of thousands of names would pass the limit on a command line.
process VIRNUCPRO_PREDICT {
    tag "${meta.id}"
    label 'process_low'

    input:
    tuple val(meta), path(prepared, stageAs: '_input/prepared'), path(embeddings, stageAs: '_input/embeddings/*')
    // classifier_sha256: of the classifier file when the run started ('' when unknown), checked
    // against the one predict scored with (bin/pinned_models.py)
    tuple path(classifier_files, stageAs: '_input/models/*'), val(classifier_sha256)
    val user_classifier

    output:
    tuple val(meta), path("${prefix}/prediction_results.txt"), emit: predictions
    tuple val(meta), path("${prefix}/prediction_results_highestscore.csv"), emit: highestscore
    tuple val(meta), path("${prefix}/chunks.tsv"), emit: chunks
    tuple val(meta), path("${prefix}/sequences.tsv"), emit: sequences
    tuple val(meta), path("${prefix}/report.html"), emit: report
    tuple val(meta), path("${prefix}/run_info.json"), emit: run_info
    tuple val(meta), path("${prefix}.summary.tsv"), emit: summary
    tuple val("${task.process}"), val('virnucpro'), eval('virnucpro --version | sed "s/^virnucpro //"'), emit: versions_virnucpro

    script:
    def args = task.ext.args ?: ''
    prefix = task.ext.prefix ?: "${meta.id}"
    def user_file = classifier_files instanceof List ? classifier_files[0] : classifier_files
    def model_args = user_classifier ? "--classifier ${user_file}" : '--models _input/models'
    """
    require_virnucpro.sh ${workflow.manifest.version}
    virnucpro predict \\
        --prepared ${prepared} \\
        ${model_args} \\
        --embeddings _input/embeddings \\
        --outdir ${prefix} \\
        --threads ${task.cpus} \\
        ${args}
    virnucpro_python pinned_models.py ${classifier_sha256 ? "--classifier-sha256 ${classifier_sha256} --run-info ${prefix}/run_info.json" : ''}
    virnucpro_python virnucpro_summary.py row ${prefix} --sample ${meta.id} --out ${prefix}.summary.tsv
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    mkdir -p ${prefix}
    printf 'Sequence_ID\\tPrediction\\tscore1\\tscore2\\n' > ${prefix}/prediction_results.txt
    printf 'Modified_ID\\tIs_Virus\\n' > ${prefix}/prediction_results_highestscore.csv
    printf 'chunk_id\\tsequence_id\\tstart\\tlength\\tn_orfs\\tbest_orf\\tmax_score_virus\\tcall\\n' > ${prefix}/chunks.tsv
    printf 'sequence_id\\tlength\\tn_chunks\\tn_chunks_virus\\tn_chunks_no_orf\\tfraction_virus\\tmax_score_virus\\tmean_score_virus\\tcall\\n' > ${prefix}/sequences.tsv
    printf '<!DOCTYPE html>\\n<html lang="en"><head><meta charset="utf-8"><title>virnucpro report: stub</title></head></html>\\n' > ${prefix}/report.html
    printf '{\\n  "virnucpro_version": "stub",\\n  "stub": true\\n}\\n' > ${prefix}/run_info.json
    printf 'sample\\n' > ${prefix}.summary.tsv
    """
}
