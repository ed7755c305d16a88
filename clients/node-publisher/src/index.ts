/**
 * @notification-gateway/publisher: send to the notification gateway's clients from Node.
 *
 *   const publisher = new NotificationPublisher(process.env.REDIS_URL!);
 *   await publisher.sendToUser(42, "coins:earned", { amount: 50, reason: "quiz", newBalance: 1250 });
 */
export { NotificationPublisher } from "./publisher";
export type { ContractEvent, ContractPayloads, PayloadOf, PublisherOptions, UserId } from "./publisher";
export { ClusterModeError, InvalidArgument, InvalidEvent, InvalidPayload, InvalidRoom, PublishError, PublishTimeout } from "./errors";
export { BusNames, encodeControl, encodeEvent } from "./envelope";
export { checkEventName, sanitize } from "./payload";
export { checkRoom, parseRoom, userRoom } from "./rooms";
export { parseRedisUrl, redact } from "./url";
export type {
  AchievementUnlocked, CoinsEarned, NotificationNew, NotificationRead, Rank, RankPromoted, ServerToClientEvents,
} from "./generated/notifications";
export * as scripts from "./generated/scripts";
