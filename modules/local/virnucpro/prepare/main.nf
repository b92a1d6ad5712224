// Chunk the reads of one sample, translate six frames and write the ORF shards (one EMBED task each).
// Wraps `virnucpro prepare` (CONTRACTS.md: "Prepare output directory"). Each input file is staged in a
// folder of its own (input/1/, input/2/, ...), so files with the same name from different folders all count.
process VIRNUCPRO_PREPARE {
    tag "${meta.id}"
    label 'process_medium'
    // Keyed by the content of the reads, not their size and modification time: an input changed in
    // place with its time restored (or two samples' files swapped) was reused with its old results,
    // and one fetched again unchanged (a new time) was prepared and embedded again. Costs one read of
    // each input per launch, on the machine running Nextflow.
    cache 'deep'

    input:
    tuple val(meta), path(reads, stageAs: 'input/?/*')

    output:
    tuple val(meta), path('prepared', type: 'dir'), emit: prepared
    tuple val(meta), path('prepared/shards/shard_*.tsv', arity: '1..*'), emit: shards
    tuple val("${task.process}"), val('virnucpro'), eval('virnucpro --version | sed "s/^virnucpro //"'), emit: versions_virnucpro

    script:
    def args = task.ext.args ?: ''
    // virnucpro names the files as this task has them (input/N/<name>): bad input (exit 3) says where they are from
    """
    require_virnucpro.sh ${workflow.manifest.version}
    virnucpro prepare \\
        ${reads} \\
        --outdir prepared \\
        --threads ${task.cpus} \\
        ${args} \\
        || { status=\$?; [ \$status -ne 3 ] || echo "note: input/N/<name> is this task's copy of the N-th file of sample ${meta.id} in the samplesheet; <outdir>/pipeline_info/inputs_<start>.tsv of this run gives the path of each" >&2; exit \$status; }
    """

    stub:
    """
    mkdir -p prepared/shards
    echo '{"stub": true}' > prepared/.virnucpro.json
    echo '{"format_version": 2, "stub": true}' > prepared/manifest.json
    printf 'sequence_id\\tlength\\tn_chunks\\tn_orfs\\tstatus\\tmasked_bases\\n' > prepared/sequences.tsv
    printf 'chunk_id\\tsequence_id\\tstart\\tlength\\tn_orfs\\n' > prepared/chunks.tsv
    printf '# virnucpro-shard format_version=2 chunk_size=500 index=0 of=1\\nid\\tnucleotide\\tprotein\\n' > prepared/shards/shard_00000.tsv
    """
}
