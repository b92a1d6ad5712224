#!/usr/bin/env nextflow
/*
 * virnucpro: identify viral short sequences (VirNucPro: six-frame ORFs embedded by DNABERT-S and
 * ESM-2, classified by the original MLP), scaled out by Nextflow.
 *
 *   nextflow run . -profile test,docker --outdir results
 *   nextflow run . -profile slurm,apptainer,gpu --input 'reads/*.fa.gz' --models /site/virnucpro-models --outdir results
 *
 * See docs/nextflow.md for profiles, parameters, resume and offline compute nodes. Parameters are
 * read here only; the workflows below get them as inputs.
 */

include { VIRNUCPRO                                       } from './workflows/virnucpro'
include { PIPELINE_INITIALISATION ; defaultCheckpointDir } from './subworkflows/local/utils_virnucpro_pipeline'

workflow {
    main:
    PIPELINE_INITIALISATION(
        params.validate_params,
        params.input,
        params.models
    )
    VIRNUCPRO(
        PIPELINE_INITIALISATION.out.samples,
        params.models,
        params.tiny_models,
        params.classifier,
        params.checkpoint_dir ?: defaultCheckpointDir(workflow.workDir),
        params.outdir
    )
}
