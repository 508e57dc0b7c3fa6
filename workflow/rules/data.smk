localrules:
    prepare_cifar10,


# CIFAR-10 is where data.root says (downloaded there when data.download is true). The
# output is a marker whose path does not name the root: moving the data reruns nothing,
# and the pack jobs are told the current root on their command line.
rule prepare_cifar10:
    output:
        DATA_READY.format(name="cifar10"),
    log:
        rule_log("prepare_cifar10", "cifar10"),
    script:
        "../scripts/prepare_cifar10.py"
