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
include { PIPELINE_INITIALISATION ; asChunkSize ; asText ; checkClassifierChunkSize ; checkClassifierEncoders ; checkClassifierRecord ; checkModelsDirectory ; checkParameterPaths ; checkpointDir ; checkGoogleGpuType ; checkSlurmGpuType ; checkSlurmQueues ; embedSettingsRecord ; lockOutdir ; markStubRun ; markUnfinished ; recordEmbedSettings ; refuseUnusedArguments ; removeEarlierShards ; writeParamsFile ; refuseLinksAcrossFileSystems ; refusePublishingUnlikeParams ; warnIfEmbedKeyChanged ; warnIfMultiqcMissing ; warnIfReportCutShort ; warnIfReportsElsewhere } from './subworkflows/local/utils_virnucpro_pipeline'
include { commandLineWords ; paramsHelp ; paramsSummaryLog ; validateParameters } from './subworkflows/local/utils_schema'

workflow {
    main:
    def schema = "${projectDir}/nextflow_schema.json"
    // `== true`: a quoted "false" from a params file is a string Groovy reads as true; it goes on
    // to validation, which refuses it, instead of answering with help or a version and exit 0
    if (params.version == true) {
        println("${workflow.manifest.name} ${workflow.manifest.version}") // also under `nextflow -q`
    }
    else if ((params.help && params.help != 'false') || params.help_full == true) {
        log.info(paramsHelp(schema, params, 'nextflow run . -profile <docker/singularity/apptainer>[,gpu] --input reads.fa --outdir results'))
    }
    else {
        refuseUnusedArguments(args)
        // Every problem with the parameters at once, before any task
        if (params.validate_params != false) { // a blank (null) validate_params is refused by it, not skipped
            validateParameters(params, schema, commandLineWords(workflow.commandLine))
        }
        log.info(paramsSummaryLog(params, schema, workflow))
        // Paths a task's shell script would misread ($, globs, control characters), the work and
        // launch folders included: before any use
        checkParameterPaths(params)
        refusePublishingUnlikeParams(workflow.session.config.process, asText(params.publish_dir_mode),
            [VIRNUCPRO_PREPARE: params.save_prepared as boolean, VIRNUCPRO_EMBED: params.save_embeddings as boolean])
        checkSlurmQueues([slurm_queue: params.slurm_queue, slurm_gpu_queue: params.slurm_gpu_queue])
        checkGoogleGpuType(params.gpu_type, asText(params.device), asText(params.google_machine_type))
        checkSlurmGpuType(params.gpu_type, asText(params.device), params.slurm_gpu_queue ?: params.slurm_queue)
        warnIfMultiqcMissing(params.skip_multiqc)
        warnIfReportCutShort()
        // paths as text and the chunk size as a number, however a params file typed them
        def chunk_size = asChunkSize(params.chunk_size)
        if (params.models) {
            // the classifier for --chunk_size is looked for only when no --classifier replaces it
            checkModelsDirectory(asText(params.models), params.classifier ? null : chunk_size)
        }
        if (params.classifier) {
            checkClassifierRecord(asText(params.classifier))
            checkClassifierChunkSize(asText(params.classifier), chunk_size, asText(params.models))
            if (params.models) {
                checkClassifierEncoders(asText(params.classifier), asText(params.models))
            }
        }
        // refused (object storage, mount syntax) before anything is written into --outdir
        def checkpoint_dir = checkpointDir(asText(params.checkpoint_dir), workflow.workDir)
        if (params.outdir) {
            lockOutdir(asText(params.outdir), checkpoint_dir)
            warnIfReportsElsewhere(asText(params.outdir), asText(params.trace_report_suffix))
            refuseLinksAcrossFileSystems(asText(params.outdir), asText(params.publish_dir_mode))
        }
        PIPELINE_INITIALISATION(
            asText(params.input),
            asText(params.outdir),
            asText(params.trace_report_suffix),
            [multiqc: !params.skip_multiqc, prepared: params.save_prepared as boolean, embeddings: params.save_embeddings as boolean,
             links: asText(params.publish_dir_mode) in ['symlink', 'rellink']],
            [checkpoint: checkpoint_dir, work: workflow.workDir.toString()]
        )
        if (params.outdir) {
            writeParamsFile(asText(params.outdir), asText(params.trace_report_suffix), params)
        }
        def embed_settings = [checkpoint_dir: checkpoint_dir, token_budget: params.token_budget, compile: params.compile]
        def embed_record = embedSettingsRecord()
        warnIfEmbedKeyChanged(embed_record, embed_settings)
        markStubRun(asText(params.outdir))
        markUnfinished(asText(params.outdir))
        VIRNUCPRO(
            PIPELINE_INITIALISATION.out.samples,
            asText(params.models),
            params.tiny_models,
            asText(params.classifier),
            chunk_size,
            checkpoint_dir,
            params.skip_multiqc
        )
        // the settings EMBED tasks are keyed by, recorded once this run has a shard embedded or cached
        VIRNUCPRO.out.embeddings.first().subscribe { _shard -> recordEmbedSettings(embed_record, embed_settings) }
        // a sample's published embeddings/ holds this run's shards only, once they are all embedded
        if (params.outdir && params.save_embeddings) {
            VIRNUCPRO.out.embeddings
                .map { meta, h5 -> [groupKey(meta.id, meta.n_shards), h5.name] }
                .groupTuple()
                .subscribe { id, names -> removeEarlierShards(asText(params.outdir), id.toString(), names, params.publish_dir_mode in ['symlink', 'rellink']) }
        }
    }
}
