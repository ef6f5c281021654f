/*
 * The commands of the queue (commands.h).
 */
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "targets.h"

spillway_cmd_publish *spillway_cmd_publish_new(int kind, const char *channel, size_t chlen, spillway_frame *frame,
                                               size_t keyspace)
{
    spillway_cmd_publish *cmd = malloc(sizeof(*cmd) + chlen + keyspace);
    if (cmd == NULL) return NULL;
    cmd->base.kind = kind;
    cmd->frame = frame;
    cmd->seq = 0;
    cmd->keylen = 0;
    cmd->key_ttl_ms = 0;
    cmd->first_ms = 0;
    cmd->maybe_ran = false;
    cmd->chlen = (uint32_t)chlen;
    memcpy(cmd->channel, channel, chlen);
    return cmd;
}

void spillway_cmd_free(spillway_cmd *cmd)
{
    if (cmd->kind == SW_CMD_PUBLISH || cmd->kind == SW_CMD_PUBLISH_ASYNC)
        spillway_frame_unref(((spillway_cmd_publish *)cmd)->frame);
    if (cmd->kind == SW_CMD_ATTACH) spillway_targets_unref(((spillway_cmd_attach *)cmd)->ident);
    free(cmd);
}
